"""Safe loading by default (training.pickles, torch_utils.safe_pickle, training.rebuild, training.safetensors_io).

Crafted files of several kinds must never run their code (a marker file would appear) and must fail with one line
naming the file; real snapshots (ours, reference-format ones that embed other source, with resume_state) must load
in safe mode with bitwise-identical outputs; `.safetensors` round trips; `--trust-pickle` keeps the old behaviour.
TensorFlow-era pickles are loaded in safe mode by tests/test_legacy_tf.py, resumed snapshots by
tests/test_train_resume.py.
"""

import copy
import io
import json
import os
import pickle
import textwrap

import numpy as np
import pytest
import safetensors
import torch
from click.testing import CliRunner

import dnnlib
import legacy
from metrics import metric_utils
from torch_utils import persistence
from training import augment, networks, pickles, rebuild, safetensors_io
from training.resume import rng_state

BATCH = 2
C_DIM = 2
RES = 16
# nn.Module state entries that PyTorch 1.7 (the reference's) did not write.
NEWER_TORCH_HOOKS = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_backward_pre_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
    "_is_full_backward_hook",
)


def _tiny_snapshot(with_resume_state=True):
    """A snapshot dict as training writes it: G, D, G_ema, augment_pipe (and resume_state), eval mode."""
    torch.manual_seed(0)
    G = networks.Generator(
        z_dim=8,
        c_dim=C_DIM,
        w_dim=8,
        img_resolution=RES,
        img_channels=3,
        mapping_kwargs=dnnlib.EasyDict(num_layers=2),
        synthesis_kwargs=dnnlib.EasyDict(channel_base=64, channel_max=8),
    )
    D = networks.Discriminator(c_dim=C_DIM, img_resolution=RES, img_channels=3, channel_base=64, channel_max=8)
    pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, brightness=1, contrast=1, saturation=1)
    with torch.no_grad():
        for net in (G, D):
            for name, tensor in net.named_parameters():
                if name.endswith(("bias", "noise_strength")):
                    tensor.add_(torch.randn_like(tensor) * 0.1)
        G.mapping.w_avg.normal_()
        pipe.p.fill_(0.3)
    opt = torch.optim.Adam(G.parameters(), lr=0.01, betas=(0.0, 0.99))
    G(torch.randn([BATCH, 8]), torch.eye(C_DIM)[:BATCH]).square().mean().backward()
    opt.step()
    data = dict(training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"))
    for key, net in (("G", G), ("D", D), ("G_ema", G), ("augment_pipe", pipe)):
        data[key] = copy.deepcopy(net).eval().requires_grad_(False)
    if with_resume_state:
        data["resume_state"] = dict(optimizers=dict(G=opt.state_dict()), rng=rng_state(torch.device("cpu")), pl=[0.5])
    return data


def _outputs(data):
    """G_ema images, D logits and augmented images (fixed inputs and RNG): bitwise comparable."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn([BATCH, 8], generator=gen)
    c = torch.eye(C_DIM)[:BATCH]
    with torch.no_grad():
        img = data["G_ema"](z, c, noise_mode="const")
        logits = data["D"](img, c)
        torch.manual_seed(2)
        augmented = data["augment_pipe"](img) if data.get("augment_pipe") is not None else img
    return img, logits, augmented


def _assert_same_outputs(a, b):
    for x, y in zip(_outputs(a), _outputs(b)):
        assert torch.equal(x, y)


class _SourcePickler(pickle.Pickler):
    """Pickles persistent objects with `edit(meta)` applied to their meta (e.g. another embedded source)."""

    def __init__(self, file, edit, protocol=None):
        super().__init__(file, protocol=protocol)
        self.edit = edit

    def reducer_override(self, obj):
        if not persistence.is_persistent(obj):
            return NotImplemented
        func, (meta,), *rest = obj.__reduce__()
        meta = dict(meta)
        self.edit(meta)
        return (func, (meta,), *rest)


def _pickle_bytes(data, edit=None, protocol=None):
    buffer = io.BytesIO()
    if edit is None:
        pickle.dump(data, buffer, protocol=protocol)
    else:
        _SourcePickler(buffer, edit, protocol=protocol).dump(data)
    return buffer.getvalue()


def _load_file(path, **kwargs):
    with open(path, "rb") as f:
        return pickles.load_network_pkl(f, **kwargs)


def _one_line_error(error_type, path, **kwargs):
    with pytest.raises(error_type) as info:
        _load_file(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


@pytest.fixture()
def marker(tmp_path):
    """A file that crafted payloads try to create; it must never exist unless the file's code was trusted."""
    path = tmp_path / "code-ran"
    yield path


def _payload(marker_path):
    return f"open({str(marker_path)!r}, 'w').write('ran')"


# ----------------------------------------------------------------------------
# Our snapshots and reference-format snapshots


def test_own_snapshot_loads_safely_with_identical_outputs(tmp_path, capsys):
    data = _tiny_snapshot()
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(_pickle_bytes(data))
    safe = _load_file(path)
    trusted = _load_file(path, allow_code=True)
    assert capsys.readouterr().err == ""  # our own code: nothing to report
    assert list(safe) == list(data)
    for key in ("G", "D", "G_ema", "augment_pipe"):
        assert type(safe[key]).__bases__[0].__module__ in rebuild.PROJECT_MODULES
        assert type(safe[key]) is type(data[key]) and not safe[key].training
        assert safe[key].init_kwargs == data[key].init_kwargs
        for (name, a), (name_b, b) in zip(safe[key].state_dict().items(), data[key].state_dict().items()):
            assert name == name_b and torch.equal(a, b)
        assert all(not p.requires_grad for p in safe[key].parameters())
    assert isinstance(safe["G"].init_kwargs.synthesis_kwargs, dnnlib.EasyDict)
    _assert_same_outputs(safe, data)
    _assert_same_outputs(safe, trusted)
    state, expected = safe["resume_state"], data["resume_state"]
    assert state["pl"] == [0.5] and state["rng"]["numpy"][0] == "MT19937"
    assert np.array_equal(state["rng"]["numpy"][1], expected["rng"]["numpy"][1])
    assert torch.equal(state["rng"]["torch"], expected["rng"]["torch"])
    exp_avg = state["optimizers"]["G"]["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, expected["optimizers"]["G"]["state"][0]["exp_avg"])
    # Re-pickled, the rebuilt networks still load in the reference's way (running the embedded source).
    again = tmp_path / "again.pkl"
    again.write_bytes(_pickle_bytes(safe))
    _assert_same_outputs(_load_file(again, allow_code=True), data)


def test_rebuilding_draws_nothing_from_the_global_rng(tmp_path):
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(_pickle_bytes(_tiny_snapshot(with_resume_state=False)))
    torch.manual_seed(123)
    _load_file(path)
    after = torch.rand([3])
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand([3]))


def test_embedded_source_payload_never_runs(tmp_path, marker, capsys):
    """A reference-format pickle whose embedded module source differs from ours (here: a payload appended) is
    rebuilt from our classes without running it, with one note; trusted, the file's own code runs."""
    data = _tiny_snapshot(with_resume_state=False)

    def append_payload(meta):
        meta["module_src"] = meta["module_src"] + "\n" + _payload(marker) + "\n"
        # As the PyTorch 1.7-era reference pickled modules: without the hook dictionaries of newer PyTorch.
        meta["state"] = {key: value for key, value in meta["state"].items() if key not in NEWER_TORCH_HOOKS}

    path = tmp_path / "trojan.pkl"
    path.write_bytes(_pickle_bytes(data, append_payload, protocol=2))
    safe = _load_file(path)
    assert not marker.exists()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"Warning: {path}: the code embedded in the file was not run; this project's {module_file} is used instead "
        "(--trust-pickle (allow_code=True) runs the file's own code)."
        for module_file in ("training/augment.py", "training/networks.py")
    ]
    _assert_same_outputs(safe, data)
    # Re-pickling writes this project's source: the payload is gone for whoever loads the new file.
    assert b"code-ran" not in _pickle_bytes(safe)

    result = CliRunner().invoke(legacy.convert_network_pickle, [f"--source={path}", f"--dest={tmp_path / 'out.pkl'}"])
    assert result.exit_code == 0 and not marker.exists(), result.output

    trusted_dest = tmp_path / "trusted.pkl"
    result = CliRunner().invoke(
        legacy.convert_network_pickle, [f"--source={path}", f"--dest={trusted_dest}", "--trust-pickle"]
    )
    assert result.exit_code == 0, result.output
    assert marker.exists()  # --trust-pickle: the file's code ran, as in the reference
    marker.unlink()
    trusted = _load_file(path, allow_code=True)
    assert not marker.exists()  # that source already ran in this process (once per distinct source text)
    _assert_same_outputs(trusted, data)
    _assert_same_outputs(_load_file(trusted_dest, allow_code=True), data)


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _crafted_files(tmp_path, marker):
    """(name, bytes, expected message part) of crafted pickles that must be refused without running anything."""
    good = _tiny_snapshot(with_resume_state=False)
    system = _Reduce(os.system, f"touch {marker}")
    evil_storage = torch.storage._load_from_bytes  # its bytes are a whole pickle, read by torch.load
    storage_bytes = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
    unknown_src = textwrap.dedent(
        f"""\
        {_payload(marker)}
        import torch
        class Net(torch.nn.Module):
            pass
        """
    )
    unknown = _Reduce(
        persistence._reconstruct_persistent_obj,
        dict(type="class", version=6, module_src=unknown_src, class_name="Net", state={}),
    )
    return [
        ("reduce-os-system", pickle.dumps(dict(good, G=system)), "refused to load the file: it refers to posix.system"),
        ("exec", pickle.dumps(dict(good, G=_Reduce(exec, _payload(marker)))), "it refers to builtins.exec"),
        (
            "object-array",
            pickle.dumps(dict(good, training_set_kwargs=dict(x=np.array([system], dtype=object)))),
            "refused to load the file: it holds a NumPy array or scalar of dtype 'O8'",
        ),
        (
            "object-dtype",
            pickle.dumps(dict(good, training_set_kwargs=dict(x=np.array([1, "a"], dtype=object)))),
            "it holds a NumPy array or scalar of dtype 'O8'",
        ),
        (
            "storage-bytes",
            pickle.dumps(dict(good, G=_Reduce(evil_storage, storage_bytes))),
            "its tensor storage bytes hold more than a storage",
        ),
        (
            "class-state",
            b"\x80\x02cdnnlib.util\nEasyDict\nN}X\x07\x00\x00\x00__len__K\x00s\x86b.",
            "it sets the state of dnnlib.util.EasyDict",
        ),
        ("unknown-class", pickle.dumps(dict(good, G=unknown)), "G is a Net from code that is not one of this project"),
    ]


def test_crafted_payloads_never_run(tmp_path, marker):
    for name, content, expected in _crafted_files(tmp_path, marker):
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(content)
        message = _one_line_error(pickles.UnsupportedPickleError, path)
        assert expected in message, (name, message)
        assert not marker.exists(), name
    # Each of them names what it refuses also on the command line, in one line.
    result = CliRunner().invoke(
        legacy.convert_network_pickle, [f"--source={tmp_path / 'reduce-os-system.pkl'}", f"--dest={tmp_path / 'o.pkl'}"]
    )
    assert result.exit_code == 1 and not marker.exists()
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and "posix.system" in result.stderr
    assert "--trust-pickle" in result.stderr


def test_rebuilt_network_must_match_the_stored_tensors(tmp_path):
    data = _tiny_snapshot(with_resume_state=False)

    def claim_wider_latent(meta):
        if meta["class_name"] == "Generator":
            state = dict(meta["state"])
            state["_init_kwargs"] = dict(state["_init_kwargs"], z_dim=4)
            meta["state"] = state

    path = tmp_path / "mismatch.pkl"
    path.write_bytes(_pickle_bytes(data, claim_wider_latent))
    message = _one_line_error(pickles.NetworkMismatchError, path)
    assert message == (
        f"{path}: G.mapping.fc0.weight: the file has [8, 16] torch.float32, this project's code [8, 12] torch.float32"
    )


# ----------------------------------------------------------------------------
# Networks this project does not implement (issue 13, item 6)

STYLEGAN3_SRC = textwrap.dedent(
    """\
    import torch
    from torch_utils import persistence
    from torch_utils.ops import filtered_lrelu

    @persistence.persistent_class
    class SynthesisInput(torch.nn.Module):
        pass

    @persistence.persistent_class
    class Generator(torch.nn.Module):
        pass
    """
)


def test_stylegan3_pickle_is_one_line_unsupported(tmp_path, marker):
    state = dict(training=False, _parameters={}, _buffers={}, _modules={}, _init_args=(), _init_kwargs={})
    G = _Reduce(
        persistence._reconstruct_persistent_obj,
        dict(type="class", version=6, module_src=STYLEGAN3_SRC, class_name="Generator", state=state),
    )
    path = tmp_path / "stylegan3-t-ffhq.pkl"
    path.write_bytes(pickle.dumps(dict(G=G, D=G, G_ema=G)))
    message = _one_line_error(pickles.UnsupportedNetworkError, path)
    assert message == (
        f"{path}: G is a StyleGAN3 network (class Generator of training/networks_stylegan3.py), which this project "
        "does not support (it implements StyleGAN2-ADA)"
    )
    message = _one_line_error(pickles.UnsupportedNetworkError, path, allow_code=True)
    assert "cannot run the code embedded in the file: it needs something this project lacks" in message
    assert "filtered_lrelu" in message and "StyleGAN3 network" in message
    for extra in ([], ["--trust-pickle"]):
        result = CliRunner().invoke(
            legacy.convert_network_pickle, [f"--source={path}", f"--dest={tmp_path / 'out.pkl'}", *extra]
        )
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "StyleGAN3" in result.stderr


# ----------------------------------------------------------------------------
# Weights without code: .safetensors


def test_safetensors_round_trip_gives_identical_images(tmp_path):
    data = _tiny_snapshot()
    source, dest = tmp_path / "snapshot.pkl", tmp_path / "networks.safetensors"
    source.write_bytes(_pickle_bytes(data))
    result = CliRunner().invoke(legacy.convert_network_pickle, [f"--source={source}", f"--dest={dest}"])
    assert result.exit_code == 0, result.output
    with safetensors.safe_open(str(dest), "pt") as f:
        meta = json.loads(f.metadata()[safetensors_io.METADATA_KEY])
        assert "G_ema.mapping.fc0.weight" in f.keys()
    assert meta["networks"]["G_ema"]["class"] == "training.networks.Generator"
    assert meta["networks"]["augment_pipe"]["class"] == "training.augment.AugmentPipe"
    assert meta["networks"]["G"]["init_kwargs"]["__dict__"]["z_dim"] == 8

    loaded = pickles.load_network_from(str(dest))
    with open(dest, "rb") as f:  # as --resume reads it
        _assert_same_outputs(pickles.load_network_pkl(f), data)
    assert list(loaded) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert loaded["training_set_kwargs"] == data["training_set_kwargs"]
    for key in ("G", "D", "G_ema", "augment_pipe"):
        assert type(loaded[key]) is type(data[key]) and loaded[key].init_kwargs == data[key].init_kwargs
        assert not loaded[key].training and all(not p.requires_grad for p in loaded[key].parameters())
    assert isinstance(loaded["G"].init_kwargs.mapping_kwargs, dnnlib.EasyDict)
    _assert_same_outputs(loaded, data)
    back = tmp_path / "back.pkl"  # and back to a pickle, e.g. for the reference
    assert CliRunner().invoke(legacy.convert_network_pickle, [f"--source={dest}", f"--dest={back}"]).exit_code == 0
    _assert_same_outputs(_load_file(back, allow_code=True), data)
    # A network file with another class name is refused, and so is one whose tensors do not fit.
    payload = dest.read_bytes().replace(b"training.networks.Generator", b"training.networks.Foooooooo")
    (tmp_path / "bad.safetensors").write_bytes(payload)
    message = _one_line_error(pickles.UnsupportedNetworkError, tmp_path / "bad.safetensors")
    assert "G is a training.networks.Foooooooo, not a class of this project's" in message


def test_safetensors_dest_is_replaced_atomically(tmp_path, monkeypatch):
    source, dest = tmp_path / "snapshot.pkl", tmp_path / "out.safetensors"
    source.write_bytes(_pickle_bytes(_tiny_snapshot(with_resume_state=False)))
    dest.write_bytes(b"previous contents")

    def disk_full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    result = CliRunner().invoke(legacy.convert_network_pickle, [f"--source={source}", f"--dest={dest}"])
    assert result.exit_code == 1
    assert f"Error: Cannot write --dest {dest}: [Errno 28] No space left on device" in result.stderr
    assert dest.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "snapshot.pkl"]


# ----------------------------------------------------------------------------
# Named networks (issue 13, item 5)


def test_named_network_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dnnlib.util, "_dnnlib_cache_dir", str(tmp_path / "cache"))

    def offline(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(dnnlib.util, "_fetch_url", offline)
    url = pickles.NAMED_NETWORKS["ffhq256"]
    cache_path = dnnlib.util.url_cache_path(url)
    with pytest.raises(pickles.NetworkPickleReadError) as info:
        pickles.load_network_from("ffhq256", verbose=False)
    assert str(info.value) == (
        f"Cannot download the network ffhq256 ({url}): OSError: network is unreachable; offline, save the file as "
        f"{cache_path} or pass its local path"
    )
    # Once the file is there, the name loads it (here a small stand-in, as .safetensors).
    os.makedirs(os.path.dirname(cache_path))
    data = _tiny_snapshot(with_resume_state=False)
    safetensors_io.save_networks(cache_path, data)
    _assert_same_outputs(pickles.load_network_from("ffhq256", verbose=False), data)

    with pytest.raises(pickles.NetworkPickleReadError, match="nor is it a named network: ffhq256, ffhq512"):
        pickles.load_network_from("ffhq128")


def test_stats_cache_refuses_object_arrays(tmp_path):
    stats = metric_utils.FeatureStats(capture_all=True)
    stats.append(np.ones([2, 3]))
    state = dict(vars(stats), all_features=[np.array([{"a": 1}], dtype=object)])
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps(state))
    with pytest.raises(pickle.UnpicklingError, match=r"stats\.pkl: expected feature statistics .*dtype 'O8'"):
        metric_utils.FeatureStats.load(path)
