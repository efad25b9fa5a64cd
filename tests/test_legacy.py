"""Tests for legacy.load_network_pkl (docs/compatibility.md, "Pickles") on hand-built reference-format pickles.

The networks of these pickles (TinyGenerator, ...) exist only in their embedded source, so loading them must run that
source: they test the trusted path (`allow_code=True`, `--trust-pickle`), which behaves as the reference's loader.
File-level errors are checked in both modes; tests/test_safe_loading.py covers the default, safe mode.
"""

import collections
import io
import pickle
import pickletools
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import legacy
from torch_utils import persistence
from training import pickles, tf_conversion

# Network source as it would be embedded in a snapshot: it exists nowhere on disk, so loading must execute it.
EMBEDDED_SRC = textwrap.dedent(
    """\
    import numpy as np
    import torch

    from torch_utils import misc, persistence


    @misc.profiled_function
    def scaled(x, gain):
        return x * gain


    @persistence.persistent_class
    class TinyLayer(torch.nn.Module):
        def __init__(self, features, conv_clamp=None):
            super().__init__()
            self.conv_clamp = conv_clamp
            self.weight_gain = np.float64(1 / np.sqrt(features))
            self.weight = torch.nn.Parameter(torch.zeros([features, features]))
            self.register_buffer("bias", torch.zeros([features]))

        def forward(self, x):
            misc.assert_shape(x, [None, self.weight.shape[1]])
            y = scaled(x @ self.weight.t(), self.weight_gain) + self.bias
            if self.conv_clamp is not None:
                y = y.clamp(-self.conv_clamp, self.conv_clamp)
            return y


    @persistence.persistent_class
    class TinyGenerator(torch.nn.Module):
        def __init__(self, z_dim, mapping_kwargs={}, synthesis_kwargs={}):
            super().__init__()
            self.z_dim = z_dim
            self.num_fp16_res = synthesis_kwargs.get("num_fp16_res", 0)
            self.synthesis = TinyLayer(z_dim, conv_clamp=synthesis_kwargs.get("conv_clamp", None))
            self.register_buffer("w_avg", torch.zeros([z_dim]))

        def forward(self, z):
            return self.synthesis(z + self.w_avg)


    @persistence.persistent_class
    class TinyDiscriminator(torch.nn.Module):
        def __init__(self, features, num_fp16_res=0, conv_clamp=None):
            super().__init__()
            self.num_fp16_res = num_fp16_res
            self.layer = TinyLayer(features, conv_clamp=conv_clamp)

        def forward(self, img):
            return self.layer(img).sum(dim=1, keepdim=True)
    """
)

FEATURES = 4
RECONSTRUCT = persistence._reconstruct_persistent_obj


class _Reduce:
    """Pickles as the call `func(*args)`: lets a test write reference-format bytes without the persistence code."""

    def __init__(self, func, *args):
        self.func = func
        self.args = args

    def __reduce__(self):
        return (self.func, self.args)


def _module_state(training, parameters, buffers, modules, **attrs):
    """`nn.Module` state as the PyTorch 1.7-era reference pickled it, followed by the object's own attributes."""
    state = dict(
        training=training,
        _parameters=collections.OrderedDict(parameters),
        _buffers=collections.OrderedDict(buffers),
        _non_persistent_buffers_set=set(),
        _backward_hooks=collections.OrderedDict(),
        _forward_hooks=collections.OrderedDict(),
        _forward_pre_hooks=collections.OrderedDict(),
        _state_dict_hooks=collections.OrderedDict(),
        _load_state_dict_pre_hooks=collections.OrderedDict(),
        _modules=collections.OrderedDict(modules),
    )
    state.update(attrs)
    return state


def _persistent(class_name, state):
    meta = dict(type="class", version=6, module_src=EMBEDDED_SRC, class_name=class_name, state=state)
    return _Reduce(RECONSTRUCT, meta)


def _param(values):
    return torch.nn.Parameter(torch.as_tensor(values, dtype=torch.float32), requires_grad=False)


def _layer(seed, conv_clamp=None):
    rng = np.random.RandomState(seed)
    state = _module_state(
        False,
        [("weight", _param(rng.randn(FEATURES, FEATURES)))],
        [("bias", torch.as_tensor(rng.randn(FEATURES), dtype=torch.float32))],
        [],
        conv_clamp=conv_clamp,
        weight_gain=np.float64(1 / np.sqrt(FEATURES)),
        _init_args=(FEATURES,),
        _init_kwargs=dict(conv_clamp=conv_clamp),
    )
    return _persistent("TinyLayer", state)


def _generator(seed, synthesis_kwargs):
    init_kwargs = dict(
        z_dim=FEATURES,
        mapping_kwargs=dnnlib.EasyDict(num_layers=2),
        synthesis_kwargs=dnnlib.EasyDict(synthesis_kwargs),
    )
    state = _module_state(
        False,
        [],
        [("w_avg", torch.full([FEATURES], 0.25))],
        [("synthesis", _layer(seed, conv_clamp=synthesis_kwargs.get("conv_clamp")))],
        z_dim=FEATURES,
        num_fp16_res=synthesis_kwargs.get("num_fp16_res", 0),
        _init_args=(),
        _init_kwargs=init_kwargs,
    )
    return _persistent("TinyGenerator", state)


def _discriminator(seed, **kwargs):
    state = _module_state(
        False,
        [],
        [],
        [("layer", _layer(seed, conv_clamp=kwargs.get("conv_clamp")))],
        num_fp16_res=kwargs.get("num_fp16_res", 0),
        _init_args=(),
        _init_kwargs=dict(features=FEATURES, **kwargs),
    )
    return _persistent("TinyDiscriminator", state)


def _snapshot_bytes(synthesis_kwargs=None, d_kwargs=None, **extra):
    synthesis_kwargs = synthesis_kwargs if synthesis_kwargs is not None else {}
    d_kwargs = d_kwargs if d_kwargs is not None else {}
    data = dict(
        training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="data.zip", resolution=4),
        G=_generator(1, synthesis_kwargs),
        D=_discriminator(2, **d_kwargs),
        G_ema=_generator(3, synthesis_kwargs),
        augment_pipe=None,
    )
    data.update(extra)
    return pickle.dumps(data, protocol=2)


def _load(data, **kwargs):
    kwargs.setdefault("allow_code", True)
    return legacy.load_network_pkl(io.BytesIO(data), **kwargs)


class _MetaCapture(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return lambda meta: {"__persistent__": meta}
        return super().find_class(module, name)


def _expected_layer_output(seed, x, conv_clamp=None):
    rng = np.random.RandomState(seed)
    w = rng.randn(FEATURES, FEATURES).astype(np.float32)
    b = rng.randn(FEATURES).astype(np.float32)
    y = (x.numpy() @ w.T) * np.float32(1 / np.sqrt(FEATURES)) + b
    return y if conv_clamp is None else np.clip(y, -conv_clamp, conv_clamp)


# ----------------------------------------------------------------------------


def test_reference_format_bytes_reference_only_expected_globals():
    data = _snapshot_bytes()
    modules = set()
    for opcode, arg, _pos in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
    assert "torch_utils.persistence" in modules and "dnnlib.util" in modules
    assert not any(m.startswith("_imported_module_") or m == "tests" for m in modules)


def test_load_native_snapshot():
    result = _load(_snapshot_bytes())
    assert list(result) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    G, D, G_ema = result["G"], result["D"], result["G_ema"]
    for net in (G, D, G_ema):
        assert isinstance(net, torch.nn.Module) and persistence.is_persistent(net)
        assert not net.training
        assert all(not p.requires_grad for p in net.parameters())
    assert type(G).__name__ == "TinyGenerator" and type(G.synthesis).__name__ == "TinyLayer"
    assert type(G) is type(G_ema)  # one module per distinct source
    module = sys.modules[type(G).__bases__[0].__module__]
    assert module.__name__.startswith("_imported_module_")
    assert isinstance(G.init_kwargs.synthesis_kwargs, dnnlib.EasyDict)
    assert G.init_kwargs.mapping_kwargs.num_layers == 2
    assert isinstance(G.synthesis.weight_gain, np.float64)
    assert result["training_set_kwargs"]["resolution"] == 4 and result["augment_pipe"] is None

    x = torch.randn(3, FEATURES)
    np.testing.assert_allclose(G(x).numpy(), _expected_layer_output(1, x + 0.25), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        D(x).numpy(), _expected_layer_output(2, x).sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-5
    )


def test_repickling_writes_the_embedded_source_again():
    result = _load(_snapshot_bytes())
    data = pickle.dumps(dict(G=result["G"], D=result["D"]))
    captured = _MetaCapture(io.BytesIO(data)).load()
    g_meta = captured["G"]["__persistent__"]
    assert g_meta["module_src"] == EMBEDDED_SRC and g_meta["class_name"] == "TinyGenerator" and g_meta["version"] == 6
    layer_meta = g_meta["state"]["_modules"]["synthesis"]["__persistent__"]
    assert layer_meta["module_src"] == EMBEDDED_SRC and layer_meta["class_name"] == "TinyLayer"
    reloaded = _load(pickle.dumps(dict(G=result["G"], D=result["D"], G_ema=result["G_ema"])))
    x = torch.randn(2, FEATURES)
    assert torch.equal(reloaded["G"](x), result["G"](x))


def test_missing_optional_keys_are_added_and_extras_kept():
    raw = pickle.loads(_snapshot_bytes())
    assert isinstance(raw, dict)
    data = pickle.dumps(dict(G=_generator(1, {}), D=_discriminator(2), G_ema=_generator(3, {}), progress=5))
    result = _load(data)
    assert result["training_set_kwargs"] is None and result["augment_pipe"] is None and result["progress"] == 5


def test_validation_errors():
    """Deliberate difference: the reference's KeyError / AssertionError are UnsupportedPickleError (one line)."""
    good = dict(G=_generator(1, {}), D=_discriminator(2), G_ema=_generator(3, {}))
    with pytest.raises(
        legacy.UnsupportedPickleError, match=r"^not a network pickle \(a dict without the key 'G_ema'\)$"
    ):
        _load(pickle.dumps(dict(G=good["G"], D=good["D"])))
    with pytest.raises(legacy.UnsupportedPickleError, match="a dict without the key 'G'"):
        _load(pickle.dumps(dict(D=good["D"], G_ema=good["G_ema"])))
    with pytest.raises(legacy.UnsupportedPickleError, match="G_ema is a str, not a torch.nn.Module"):
        _load(pickle.dumps(dict(good, G_ema="not a module")))
    with pytest.raises(legacy.UnsupportedPickleError, match="training_set_kwargs is a list"):
        _load(pickle.dumps(dict(good, training_set_kwargs=[1])))
    with pytest.raises(legacy.UnsupportedPickleError, match="augment_pipe is a int"):
        _load(pickle.dumps(dict(good, augment_pipe=3)))
    assert _load(pickle.dumps(dict(good, training_set_kwargs=dnnlib.EasyDict(a=1))))["training_set_kwargs"].a == 1
    with pytest.raises(legacy.UnsupportedPickleError, match="list"):
        _load(pickle.dumps([1, 2]))
    assert issubclass(legacy.UnsupportedPickleError, RuntimeError)


def _load_file(path, allow_code=True):
    with open(path, "rb") as f:
        return legacy.load_network_pkl(f, allow_code=allow_code)


@pytest.mark.parametrize(
    "content, reason",
    [
        pytest.param(b"", "file is empty", id="empty"),
        pytest.param(_snapshot_bytes()[:1000], "truncated", id="truncated"),
        pytest.param(_snapshot_bytes()[:1], "truncated", id="one-byte"),
        pytest.param(b"\xc5\xd7\x14\x84" * 16, "not a pickle: invalid load key, '\\xc5'.", id="random-bytes"),
        pytest.param(
            b"\x89PNG\r\n\x1a\n" + bytes(64),
            "not a pickle: A load persistent id instruction was encountered, but",  # a two-line message, joined
            id="png-header",
        ),
        pytest.param(
            pickle.dumps([1, 2]), "a list, not a dict with G, D, G_ema or a TensorFlow-era (G, D, Gs) tuple", id="list"
        ),
        pytest.param(pickle.dumps({"D": 1}), "a dict without the key 'G'", id="dict-without-G"),
        pytest.param(pickle.dumps(None), "a NoneType, not a dict", id="none"),
        # Malformed bytes that the unpickler itself rejects with other exception types.
        pytest.param(
            b"\x95\xa2\xe6Hs\xb2\xbe\x96\xef", "corrupt pickle data: OverflowError: FRAME length exceeds", id="frame"
        ),
        pytest.param(b"\x83O\xc2\x96", "corrupt pickle data: ValueError: unregistered extension code", id="ext-code"),
    ],
)
@pytest.mark.parametrize("allow_code", [False, True], ids=["safe", "trusted"])
def test_bad_files_raise_unsupported_pickle_error_naming_the_file(tmp_path, content, reason, allow_code):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(legacy.UnsupportedPickleError) as info:
        _load_file(path, allow_code=allow_code)
    message = str(info.value)
    assert message.startswith(f"{path}: not a network pickle ({reason}"), message
    assert "\n" not in message


def test_unknown_global_is_named(tmp_path):
    """A global that does not exist (a pickle of some other program): trusted mode cannot import it, safe mode
    refuses it before trying."""
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"cno_such_module_xyz\nThing\n)R.")
    with pytest.raises(legacy.UnsupportedPickleError) as info:
        _load_file(path, allow_code=True)
    expected = f"{path}: not a network pickle (it needs no_such_module_xyz.Thing, which cannot be imported"
    assert str(info.value).startswith(expected)
    with pytest.raises(pickles.UnsafePickleError) as info:
        _load_file(path, allow_code=False)
    assert str(info.value).startswith(f"{path}: refused to load the file: it refers to no_such_module_xyz.Thing")


@pytest.mark.parametrize("allow_code", [False, True], ids=["safe", "trusted"])
def test_random_bytes_always_give_unsupported_pickle_error(allow_code):
    rng = np.random.RandomState(0)
    for _ in range(300):
        data = rng.randint(0, 256, size=rng.randint(1, 64), dtype=np.uint8).tobytes()
        try:
            _load(data, allow_code=allow_code)
        except legacy.UnsupportedPickleError as exc:
            assert str(exc).startswith(("not a network pickle (", "refused to load the file: ")), str(exc)
        else:
            raise AssertionError(f"random bytes {data!r} were accepted")


def test_errors_of_code_run_by_the_pickle_keep_their_type():
    """Not malformed bytes: a network source that fails must surface as itself, with its traceback."""
    meta = dict(type="class", version=6, module_src="raise ValueError('network source failed')", class_name="X",
                state={})  # fmt: skip
    data = pickle.dumps(dict(G=_Reduce(RECONSTRUCT, meta)), protocol=2)
    with pytest.raises(ValueError, match="network source failed"):
        _load(data)


def test_force_fp16_rebuilds_networks():
    result = _load(_snapshot_bytes(), force_fp16=True)
    plain = _load(_snapshot_bytes())
    for key in ("G", "D", "G_ema"):
        new, old = result[key], plain[key]
        assert type(new) is type(old)
        assert not new.training and all(not p.requires_grad for p in new.parameters())
        for (name, a), (name_b, b) in zip(
            list(new.named_parameters()) + list(new.named_buffers()),
            list(old.named_parameters()) + list(old.named_buffers()),
        ):
            assert name == name_b and torch.equal(a, b)
    G, D = result["G"], result["D"]
    assert G.init_kwargs.synthesis_kwargs == dict(num_fp16_res=4, conv_clamp=256)
    assert isinstance(G.init_kwargs.synthesis_kwargs, dnnlib.EasyDict)
    assert G.init_kwargs.mapping_kwargs == dict(num_layers=2)
    assert G.num_fp16_res == 4 and G.synthesis.conv_clamp == 256
    assert D.init_kwargs == dict(features=FEATURES, num_fp16_res=4, conv_clamp=256)
    assert D.num_fp16_res == 4 and D.layer.conv_clamp == 256
    assert result["training_set_kwargs"] == plain["training_set_kwargs"]

    x = torch.full([1, FEATURES], 1e4)  # large enough for the clamp to matter
    np.testing.assert_allclose(G(x).numpy(), _expected_layer_output(1, x + 0.25, conv_clamp=256), rtol=1e-6)
    assert float(G(x).abs().max()) == 256.0


def test_force_fp16_keeps_networks_that_already_match():
    data = _snapshot_bytes(
        synthesis_kwargs=dict(num_fp16_res=4, conv_clamp=256), d_kwargs=dict(num_fp16_res=4, conv_clamp=256)
    )
    unpickled = {}

    class Spy(pickles._LegacyUnpickler):
        def load(self):
            obj = super().load()
            unpickled.update(obj)
            return obj

    result = legacy.load_network_pkl(io.BytesIO(data), force_fp16=True, allow_code=True)
    assert result["G"].synthesis.conv_clamp == 256
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pickles, "_LegacyUnpickler", Spy)
        result = legacy.load_network_pkl(io.BytesIO(data), force_fp16=True, allow_code=True)
    for key in ("G", "D", "G_ema"):
        assert result[key] is unpickled[key]


def test_force_fp16_requires_all_names_in_old_network():
    # An old D whose state lacks the layer's bias buffer cannot provide every tensor the rebuilt D has.
    state = _module_state(
        False,
        [("weight", _param(np.ones([FEATURES, FEATURES])))],
        [],
        [],
        conv_clamp=None,
        weight_gain=np.float64(0.5),
        _init_args=(FEATURES,),
        _init_kwargs={},
    )
    broken_d = _persistent(
        "TinyDiscriminator",
        _module_state(
            False,
            [],
            [],
            [("layer", _persistent("TinyLayer", state))],
            num_fp16_res=0,
            _init_args=(),
            _init_kwargs=dict(features=FEATURES),
        ),
    )
    data = pickle.dumps(dict(G=_generator(1, {}), D=broken_d, G_ema=_generator(3, {})))
    with pytest.raises(AssertionError, match="layer.bias"):
        _load(data, force_fp16=True)


# ----------------------------------------------------------------------------
# TensorFlow-era pickles


@pytest.fixture()
def tf_network_class(monkeypatch):
    """A stand-in `dnnlib.tflib.network.Network`, importable only while the test runs (for writing a pickle)."""
    tflib = types.ModuleType("dnnlib.tflib")
    network = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, name, version):
            self.version = version
            self.name = name
            self.static_kwargs = {"resolution": 4}
            self.components = {}
            self.variables = [("Output/bias", np.zeros([1], dtype=np.float32))]

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    network.Network = Network
    tflib.network = network
    monkeypatch.setitem(sys.modules, "dnnlib.tflib", tflib)
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", network)
    return Network


def test_legacy_unpickler_maps_tf_network_to_stub(tf_network_class):
    data = pickle.dumps(tf_network_class("D", 5), protocol=2)
    del sys.modules["dnnlib.tflib.network"], sys.modules["dnnlib.tflib"]
    stub = pickles._LegacyUnpickler(io.BytesIO(data)).load()
    assert isinstance(stub, pickles.TFNetworkStub) and isinstance(stub, dnnlib.EasyDict)
    assert stub.version == 5 and stub.name == "D" and stub.static_kwargs == {"resolution": 4}
    assert len(stub) == 0  # fields are attributes, not items
    assert stub.variables[0][0] == "Output/bias"


def test_tf_pickle_is_detected_and_converted(tf_network_class):
    nets = (tf_network_class("G", 4), tf_network_class("D", 4), tf_network_class("Gs", 4))
    data = pickle.dumps(nets, protocol=2)
    del sys.modules["dnnlib.tflib.network"], sys.modules["dnnlib.tflib"]
    # Detected as TensorFlow-era and handed to the generator converter (tests/test_legacy_tf.py covers conversion);
    # these minimal stubs lack the synthesis variables, which surfaces as a missing-name error.
    for allow_code in (False, True):
        with pytest.raises(KeyError, match="synthesis/4x4/Const/const"):
            _load(data, allow_code=allow_code)
    # A 3-tuple of something else is not mistaken for a TensorFlow pickle.
    with pytest.raises(legacy.UnsupportedPickleError, match="tuple"):
        _load(pickle.dumps((1, 2, 3)))


# ----------------------------------------------------------------------------
# Command line


def _convert(*args):
    return CliRunner().invoke(legacy.convert_network_pickle, [str(a) for a in args])


def test_cli_bad_source_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    dest = tmp_path / "out.pkl"
    result = _convert("--source", empty, "--dest", dest)
    assert result.exit_code == 1, result.output
    assert f"Error: {empty}: not a network pickle (file is empty)" in result.stderr
    assert "Aborted!" not in result.output and not dest.exists()

    for source in [tmp_path / "missing.pkl", tmp_path]:
        result = _convert("--source", source, "--dest", dest)
        assert result.exit_code == 1, result.output
        assert f"Error: Cannot read network pickle {source}: " in result.stderr and str(source) in result.stderr
        assert not dest.exists()

    result = _convert("--source", f"file://{empty}", "--dest", dest)
    assert result.exit_code == 1 and "not a network pickle (file is empty)" in result.stderr


def test_cli_dest_is_checked_before_loading(tmp_path):
    source = tmp_path / "missing.pkl"  # never read: --dest fails first
    result = _convert("--source", source, "--dest", tmp_path)
    assert result.exit_code == 1
    assert f"Error: --dest {tmp_path} is a directory; expected a file name" in result.stderr
    assert "Loading" not in result.stdout

    dest = tmp_path / "no_such_folder" / "out.pkl"
    result = _convert("--source", source, "--dest", dest)
    assert result.exit_code == 1
    assert f"Error: --dest {dest}: the folder {tmp_path / 'no_such_folder'} does not exist" in result.stderr

    good = tmp_path / "good.pkl"
    good.write_bytes(_snapshot_bytes())
    result = _convert("--source", good, "--dest", tmp_path / "copy.pkl", "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert _load_file(tmp_path / "copy.pkl")["training_set_kwargs"]["resolution"] == 4


def test_legacy_reexports_the_package_loader_for_users_scripts():
    assert legacy.load_network_pkl is pickles.load_network_pkl
    assert legacy.UnsupportedPickleError is pickles.UnsupportedPickleError
    assert legacy.convert_tf_generator is tf_conversion.convert_tf_generator
    assert legacy.convert_tf_discriminator is tf_conversion.convert_tf_discriminator


def test_cli_replaces_dest_atomically(tmp_path, monkeypatch):
    """An existing --dest is replaced only by a complete pickle; a failed write leaves it as it was."""
    source, dest = tmp_path / "good.pkl", tmp_path / "out.pkl"
    source.write_bytes(_snapshot_bytes())
    dest.write_bytes(b"previous contents")

    def failing_dump(obj, f, *args, **kwargs):
        f.write(b"half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", failing_dump)
    result = _convert("--source", source, "--dest", dest, "--trust-pickle")
    assert result.exit_code == 1
    assert f"Error: Cannot write --dest {dest}: [Errno 28] No space left on device" in result.stderr
    assert dest.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pkl", "out.pkl"]  # no temporary file left behind

    monkeypatch.undo()
    result = _convert("--source", source, "--dest", dest, "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert _load_file(dest)["training_set_kwargs"]["resolution"] == 4
