"""Network pickles carry their own source: they load and run where the network classes are not on the path.

The loading process gets `dnnlib`, `torch_utils` and the loader of `training` (`pickles`, which is what
`legacy.load_network_pkl` is), but not the modules that define the networks, the augmentation or the loss. It loads
as the reference does, running the pickle's code (`allow_code=True`): that is how the reference reads our pickles.
"""

import copy
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import torch
from conftest import REPO_ROOT

from training import networks

# Only these may be importable in the loading process: the pickled network source must be self-contained.
RUNTIME_PATHS = ["dnnlib", "torch_utils", "training/__init__.py", "training/pickles.py"]
# Any of these in the loading process would mean that the pickle's own source was not enough.
DEFINING_MODULES = ["training.networks", "training.augment", "training.loss", "training.training_loop"]
BATCH = 2
SUBPROCESS_TIMEOUT_S = 120

LOADER_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch

    from training import pickles

    DEFINING_MODULES = {defining!r}
    torch.set_num_threads(1)
    pkl_path, inputs_path, out_path = sys.argv[1:4]
    with open(pkl_path, "rb") as f:
        data = pickles.load_network_pkl(f, allow_code=True)
    defining = [name for name in DEFINING_MODULES if name in sys.modules]
    assert not defining, f"unpickling imported {defining}"
    G = data["G_ema"]
    assert type(G).__name__ == "Generator", type(G).__name__
    # The persistent wrapper directly subclasses the class defined by the pickled source.
    source_module = type(G).__bases__[0].__module__
    assert source_module.startswith("_imported_module_"), source_module
    assert data["augment_pipe"] is None and data["training_set_kwargs"] is None
    inputs = np.load(inputs_path)
    z, c, img = (torch.from_numpy(inputs[key]) for key in ["z", "c", "img"])
    with torch.no_grad():
        out = G(z, c, noise_mode="const")
        logits = data["D"](img, c)

    with open(pkl_path, "rb") as f:
        data16 = pickles.load_network_pkl(f, force_fp16=True, allow_code=True)
    G16 = data16["G_ema"]
    assert G16.init_kwargs.synthesis_kwargs.num_fp16_res == 4
    assert G16.synthesis.b32.use_fp16 and not G16.synthesis.b4.use_fp16
    with torch.no_grad():
        out16 = G16(z, c, noise_mode="const")
        logits16 = data16["D"](img, c)
    assert out16.dtype == torch.float32 and bool(torch.isfinite(out16).all())
    assert bool(torch.isfinite(logits16).all())
    assert not [name for name in DEFINING_MODULES if name in sys.modules]
    np.savez(out_path, out=out.numpy(), logits=logits.numpy(), out16=out16.numpy())
    """
).replace("{defining!r}", repr(DEFINING_MODULES))


def _tiny_networks():
    torch.manual_seed(0)
    G_kwargs = dict(
        z_dim=16,
        c_dim=3,
        w_dim=16,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=128, channel_max=16),
    )
    G = networks.Generator(**G_kwargs)
    D = networks.Discriminator(c_dim=3, img_resolution=32, img_channels=3, channel_base=128, channel_max=16)
    G_ema = copy.deepcopy(G)
    # Move away from the trivial initial values so the comparison is meaningful.
    with torch.no_grad():
        for net in [G, D, G_ema]:
            for name, tensor in net.named_parameters():
                if name.endswith(("bias", "noise_strength")):
                    tensor.add_(torch.randn_like(tensor) * 0.1)
        G_ema.mapping.w_avg.normal_()
    for net in [G, D, G_ema]:
        net.eval().requires_grad_(False)
    return G, D, G_ema


def test_pickle_loads_without_training_package(tmp_path):
    G, D, G_ema = _tiny_networks()
    data = {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": None, "training_set_kwargs": None}
    pkl_path = tmp_path / "snapshot.pkl"
    with open(pkl_path, "wb") as f:
        pickle.dump(data, f)

    generator = torch.Generator().manual_seed(1)
    z = torch.randn([BATCH, G.z_dim], generator=generator)
    c = torch.nn.functional.one_hot(torch.arange(BATCH) % G.c_dim, G.c_dim).to(torch.float32)
    img = torch.rand([BATCH, 3, 32, 32], generator=generator) * 2 - 1
    inputs_path = tmp_path / "inputs.npz"
    np.savez(inputs_path, z=z.numpy(), c=c.numpy(), img=img.numpy())
    with torch.no_grad():
        expected = G_ema(z, c, noise_mode="const").numpy()
        expected_logits = D(img, c).numpy()

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for rel in RUNTIME_PATHS:
        src = os.path.join(REPO_ROOT, rel)
        if os.path.isdir(src):
            shutil.copytree(src, runtime / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (runtime / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, runtime / rel)
    out_path = tmp_path / "out.npz"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(runtime)
    result = subprocess.run(
        [sys.executable, "-c", LOADER_SCRIPT, str(pkl_path), str(inputs_path), str(out_path)],
        cwd=runtime,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, f"loader subprocess failed:\n{result.stderr[-4000:]}"

    loaded = np.load(out_path)
    np.testing.assert_array_equal(loaded["out"], expected)
    np.testing.assert_array_equal(loaded["logits"], expected_logits)
    # fp16 + conv_clamp changes numerics, but only by a little for these small activations.
    assert np.abs(loaded["out16"] - expected).max() < 0.05 * max(1.0, np.abs(expected).max())


def test_deepcopy_and_in_process_pickle_preserve_outputs():
    G, D, G_ema = _tiny_networks()
    z = torch.randn([BATCH, G.z_dim])
    c = torch.eye(G.c_dim)[:BATCH]
    clone = pickle.loads(pickle.dumps(G_ema))
    assert type(clone).__name__ == "Generator" and clone.init_kwargs == G_ema.init_kwargs
    with torch.no_grad():
        assert torch.equal(clone(z, c, noise_mode="const"), G_ema(z, c, noise_mode="const"))
        assert torch.equal(copy.deepcopy(D)(torch.zeros([BATCH, 3, 32, 32]), c), D(torch.zeros([BATCH, 3, 32, 32]), c))
