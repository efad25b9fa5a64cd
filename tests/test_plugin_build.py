"""Real builds of the upfirdn2d and bias_act plugins where a CUDA toolkit is present, with or without a GPU.

On a machine with a CUDA build of PyTorch and a matching nvcc, but no GPU (a build box, a Docker build), the
kernels cannot run, but everything before a launch can be checked: the sources compile and link against the
installed PyTorch through custom_ops.get_plugin with the flags the ops use, four processes starting at once build
each plugin exactly once, a second process reuses the build, and every call site of the ops' autograd functions
(forward, first and second order) passes an argument list the compiled bindings accept. Without a GPU there is no
device to target, so the build names the architectures of TARGET_ARCHS.

Skipped where PyTorch is a CPU build or no CUDA toolkit matching PyTorch's CUDA major version is found (e.g. CI).
"""

import os
import re
import subprocess
import textwrap

import pytest
import torch
import torch.utils.cpp_extension
from conftest import REPO_ROOT
from plugin_helpers import check_single_build, lines_starting_with, run_python_processes

BUILD_TIMEOUT_S = 900
TARGET_ARCHS = "8.0;9.0"  # Ampere and Hopper, used only when there is no GPU to target
PLUGINS = ["upfirdn2d_plugin", "bias_act_plugin"]


def _toolkit_problem():
    """Why a real plugin build cannot be tried here, or None."""
    if torch.version.cuda is None:
        return "PyTorch is a CPU-only build"
    cuda_home = torch.utils.cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home or "", "bin", "nvcc")
    if cuda_home is None or not os.path.isfile(nvcc):
        return "no CUDA toolkit (nvcc) found"
    version = re.search(r"release (\d+)\.", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
    if version is None or version.group(1) != torch.version.cuda.split(".")[0]:
        return f"nvcc at {nvcc} does not match PyTorch's CUDA {torch.version.cuda}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_toolkit_problem() is not None, reason=str(_toolkit_problem()))]

# Builds both plugins exactly as the ops modules do (minus their GPU self-check), then swaps each op's plugin for
# a proxy that hands every call to the compiled binding with CPU tensors: the binding must accept the argument
# list and stop only at its CUDA-device check. The proxy then returns zeros of the output shape so the autograd
# functions go on to their backward call sites.
_BUILD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    import torch, torch.utils.cpp_extension as cpp
    from torch_utils import custom_ops
    from torch_utils.ops import bias_act, upfirdn2d

    if not torch.cuda.is_available():
        real_load = cpp.load
        def load_for_target_archs(**kwargs):
            os.environ["TORCH_CUDA_ARCH_LIST"] = {archs!r}
            return real_load(**kwargs)
        cpp.load = load_for_target_archs

    custom_ops.verbosity = "none"
    plugins = {{}}
    for op in (upfirdn2d, bias_act):
        plugin = op._plugin.build()
        plugins[op._plugin.module_name] = plugin
        print("LOADED", op._plugin.module_name, plugin.__file__, flush=True)

    calls = []
    def through_binding(fn, args, label):
        try:
            fn(*args)
        except RuntimeError as e:
            assert "must be a CUDA tensor" in str(e), str(e)
        else:
            raise AssertionError("the binding accepted CPU tensors")
        calls.append(label)

    class Upfirdn2dProxy:
        def upfirdn2d(self, *args):
            through_binding(plugins["upfirdn2d_plugin"].upfirdn2d, args, "upfirdn2d")
            x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1 = args[:10]
            out_h = (x.shape[2] * upy + pady0 + pady1 - f.shape[0]) // downy + 1
            out_w = (x.shape[3] * upx + padx0 + padx1 - f.shape[1]) // downx + 1
            return x.new_zeros([x.shape[0], x.shape[1], out_h, out_w])

    class BiasActProxy:
        def bias_act(self, *args):
            through_binding(plugins["bias_act_plugin"].bias_act, args, f"bias_act/grad{{args[5]}}")
            return torch.zeros_like(args[0])

    upfirdn2d._plugin.module, bias_act._plugin.module = Upfirdn2dProxy(), BiasActProxy()
    x = torch.randn([2, 3, 8, 8], requires_grad=True)
    b = torch.randn([3], requires_grad=True)
    f2d = upfirdn2d.setup_filter([1, 3, 3, 1])
    f1d = upfirdn2d.setup_filter([1, 3, 3, 1], separable=True)
    for f in (f2d, f1d):
        y = upfirdn2d._upfirdn2d_cuda(up=2, down=1, padding=[2, 1, 2, 1], gain=4).apply(x, f)
        (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        dx.sum().backward()
    for act in ("lrelu", "swish", "tanh"):
        y = bias_act._bias_act_cuda(dim=1, act=act, alpha=None, gain=None, clamp=256).apply(x, b)
        dx, db = torch.autograd.grad((y * torch.randn_like(y)).sum(), [x, b], create_graph=True)
        (dx.square().sum() + db.sum()).backward()
    print("CALLS", " ".join(sorted(set(calls))), flush=True)
    """
)


def _run(extensions_dir, count):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions_dir))
    script = _BUILD_SCRIPT.format(repo=REPO_ROOT, archs=TARGET_ARCHS)
    return run_python_processes(script, env, count, BUILD_TIMEOUT_S)


def test_plugins_build_once_and_bind(tmp_path):
    outputs = _run(tmp_path, 4)
    loaded = [lines_starting_with(out, "LOADED") for out in outputs]
    assert all(len(lines) == len(PLUGINS) for lines in loaded), outputs
    assert len({tuple(lines) for lines in loaded}) == 1, f"the processes loaded different libraries: {loaded}"
    libraries = {name: check_single_build(tmp_path, name) for name in PLUGINS}
    mtimes = {name: lib.stat().st_mtime_ns for name, lib in libraries.items()}

    for out in outputs:
        (calls,) = lines_starting_with(out, "CALLS")
        assert calls == "CALLS bias_act/grad0 bias_act/grad1 bias_act/grad2 upfirdn2d", calls

    # A later process finds the build and compiles nothing.
    (out,) = _run(tmp_path, 1)
    assert lines_starting_with(out, "LOADED") == loaded[0]
    for name, lib in libraries.items():
        check_single_build(tmp_path, name)
        assert lib.stat().st_mtime_ns == mtimes[name], f"{name} was rebuilt"
