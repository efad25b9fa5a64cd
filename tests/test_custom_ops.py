"""torch_utils.custom_ops on the CPU: status output, per-process caching, the source-hash build cache (with
torch.utils.cpp_extension.load mocked), a real build of a tiny C++ (not CUDA) extension in one and in four
concurrent processes, the Windows compiler search, and the CUDA arch flags an empty TORCH_CUDA_ARCH_LIST selects."""

import os
import shutil
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.utils.cpp_extension
from conftest import REPO_ROOT

from torch_utils import custom_ops

TINY_SOURCE = textwrap.dedent(
    """
    #include <pybind11/pybind11.h>
    int add(int a, int b) { return a + b; }
    PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("add", &add); }
    """
)
BUILD_TIMEOUT_S = 300


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Empty plugin cache, a private TORCH_EXTENSIONS_DIR and TORCH_CUDA_ARCH_LIST restored afterwards."""
    monkeypatch.setattr(custom_ops, "_cached_plugins", {})
    monkeypatch.setattr(custom_ops, "verbosity", "brief")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0")
    return tmp_path


@pytest.fixture
def sources(tmp_path):
    """A source directory with two sources and a header."""
    src = tmp_path / "src"
    src.mkdir()
    for name, text in [("op.cpp", "// cpp\n"), ("op.cu", "// cu\n"), ("op.h", "// header\n")]:
        (src / name).write_text(text)
    return src


class FakeLoad:
    """Stands in for torch.utils.cpp_extension.load: records its calls and returns a module object."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return types.ModuleType(kwargs["name"])


@pytest.fixture
def fake_load(monkeypatch):
    fake = FakeLoad()
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake)
    return fake


def _get(src, name="fake_plugin", **kwargs):
    return custom_ops.get_plugin(name, ["op.cpp", "op.cu"], headers=["op.h"], source_dir=str(src), **kwargs)


def _cached_dirs(fresh, name="fake_plugin"):
    root = fresh / "extensions" / name
    return sorted(p for p in root.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------
# Mocked build


def test_builds_from_hashed_copy_of_sources(fresh, sources, fake_load, capsys):
    module = _get(sources, extra_cuda_cflags=["--use_fast_math"])
    assert module.__name__ == "fake_plugin"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "", "the build must target the local GPU only"
    (call,) = fake_load.calls
    (cached,) = _cached_dirs(fresh)
    gpu = custom_ops._get_mangled_gpu_name()
    assert cached.name.endswith(f"-{gpu}") and len(cached.name) == 32 + 1 + len(gpu)
    assert sorted(p.name for p in cached.iterdir()) == ["op.cpp", "op.cu", "op.h"]
    assert call["sources"] == [str(cached / "op.cpp"), str(cached / "op.cu")]
    assert call["build_directory"] == str(cached)
    assert call["extra_cuda_cflags"] == ["--use_fast_math"] and call["verbose"] is False
    assert capsys.readouterr().out == 'Setting up PyTorch plugin "fake_plugin"... Done.\n'


def test_second_call_is_cached_and_silent(fresh, sources, fake_load, capsys):
    first = _get(sources)
    capsys.readouterr()
    assert _get(sources) is first
    assert len(fake_load.calls) == 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "verbosity, expected",
    [
        ("none", ""),
        ("brief", 'Setting up PyTorch plugin "fake_plugin"... Done.\n'),
        ("full", 'Setting up PyTorch plugin "fake_plugin"...\nDone setting up PyTorch plugin "fake_plugin".\n'),
    ],
)
def test_status_output(fresh, sources, fake_load, capsys, monkeypatch, verbosity, expected):
    monkeypatch.setattr(custom_ops, "verbosity", verbosity)
    _get(sources)
    assert capsys.readouterr().out == expected
    assert fake_load.calls[0]["verbose"] is (verbosity == "full")


def test_failure_prints_failed_and_reraises(fresh, sources, monkeypatch, capsys):
    fake = FakeLoad(error=RuntimeError("simulated compiler failure"))
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake)
    with pytest.raises(RuntimeError, match="simulated compiler failure"):
        _get(sources)
    assert capsys.readouterr().out == 'Setting up PyTorch plugin "fake_plugin"... Failed!\n'
    assert "fake_plugin" not in custom_ops._cached_plugins


def test_unknown_verbosity_is_rejected(fresh, sources, fake_load, monkeypatch):
    monkeypatch.setattr(custom_ops, "verbosity", "loud")
    with pytest.raises(AssertionError):
        _get(sources)


def test_identical_sources_share_a_build_and_edits_get_a_new_one(fresh, sources, fake_load, monkeypatch):
    _get(sources)
    monkeypatch.setattr(custom_ops, "_cached_plugins", {})
    _get(sources)
    assert len(_cached_dirs(fresh)) == 1
    assert fake_load.calls[0]["build_directory"] == fake_load.calls[1]["build_directory"]

    # ninja does not track .cu header dependencies: a header edit alone must give a new build directory.
    (sources / "op.h").write_text("// edited header\n")
    monkeypatch.setattr(custom_ops, "_cached_plugins", {})
    _get(sources)
    assert len(_cached_dirs(fresh)) == 2
    assert fake_load.calls[2]["build_directory"] != fake_load.calls[0]["build_directory"]


def test_files_outside_the_lists_do_not_change_the_hash(fresh, sources, fake_load, monkeypatch):
    _get(sources)
    (sources / "notes.txt").write_text("unrelated\n")
    monkeypatch.setattr(custom_ops, "_cached_plugins", {})
    _get(sources)
    assert len(_cached_dirs(fresh)) == 1


def test_sources_in_several_directories_build_in_place(fresh, sources, fake_load, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "extra.cpp").write_text("// extra\n")
    paths = [str(sources / "op.cpp"), str(other / "extra.cpp")]
    custom_ops.get_plugin("split_plugin", paths)
    (call,) = fake_load.calls
    assert call["sources"] == paths and "build_directory" not in call


def test_losing_the_copy_race_discards_the_private_copy(fresh, sources, fake_load, monkeypatch):
    """Another process renames its copy into place first: ours is deleted and the winner's directory is used."""
    real_copyfile = shutil.copyfile
    state = {"raced": False}

    def copy_then_lose_race(src, dst):
        result = real_copyfile(src, dst)
        if not state["raced"]:
            state["raced"] = True
            build_dir = os.path.dirname(os.path.dirname(dst))
            digest = custom_ops._source_digest([str(sources / n) for n in ["op.cpp", "op.cu", "op.h"]])
            winner = os.path.join(build_dir, f"{digest}-{custom_ops._get_mangled_gpu_name()}")
            os.makedirs(winner)
            for name in ["op.cpp", "op.cu", "op.h"]:
                real_copyfile(sources / name, os.path.join(winner, name))
        return result

    monkeypatch.setattr(custom_ops.shutil, "copyfile", copy_then_lose_race)
    _get(sources)
    assert state["raced"]
    (cached,) = _cached_dirs(fresh)
    assert not [p for p in (fresh / "extensions" / "fake_plugin").iterdir() if p.name.startswith("srctmp-")]
    assert fake_load.calls[0]["build_directory"] == str(cached)


# ----------------------------------------------------------------------------
# Real build of a tiny C++ extension (skipped without a C++ compiler and ninja)

_HAVE_TOOLCHAIN = shutil.which("ninja") is not None and (shutil.which("c++") or shutil.which("g++")) is not None
needs_toolchain = pytest.mark.skipif(not _HAVE_TOOLCHAIN, reason="needs ninja and a C++ compiler")


def _write_tiny_source(tmp_path):
    src = tmp_path / "tiny_src"
    src.mkdir()
    (src / "tiny.cpp").write_text(TINY_SOURCE)
    return src


@needs_toolchain
def test_real_build_of_a_tiny_extension(fresh, capsys):
    src = _write_tiny_source(fresh)
    module = custom_ops.get_plugin("tiny_plugin", ["tiny.cpp"], source_dir=str(src))
    assert module.add(2, 3) == 5
    assert custom_ops.get_plugin("tiny_plugin", ["tiny.cpp"], source_dir=str(src)) is module
    (cached,) = _cached_dirs(fresh, "tiny_plugin")
    assert os.path.dirname(module.__file__) == str(cached)
    assert capsys.readouterr().out == 'Setting up PyTorch plugin "tiny_plugin"... Done.\n'


_CONCURRENT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from torch_utils import custom_ops
    custom_ops.verbosity = "none"
    module = custom_ops.get_plugin("tiny_plugin", ["tiny.cpp"], source_dir={src!r})
    assert module.add(20, 22) == 42
    print("LOADED", module.__file__)
    """
)


@needs_toolchain
def test_four_processes_build_once(fresh):
    src = _write_tiny_source(fresh)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(fresh / "extensions"))
    script = _CONCURRENT_SCRIPT.format(repo=REPO_ROOT, src=str(src))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=BUILD_TIMEOUT_S)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"process failed:\n{out}"
    loaded = {line for out in outputs for line in out.splitlines() if line.startswith("LOADED")}
    assert len(loaded) == 1, f"the processes loaded different libraries: {loaded}"
    root = fresh / "extensions" / "tiny_plugin"
    assert not [p for p in root.iterdir() if p.name.startswith("srctmp-")]
    (cached,) = _cached_dirs(fresh, "tiny_plugin")
    assert len(list(cached.glob("*.so")) + list(cached.glob("*.pyd"))) == 1
    ninja_log = cached / ".ninja_log"
    if ninja_log.exists():
        targets = [line.split("\t")[3] for line in ninja_log.read_text().splitlines()[1:] if line.count("\t") >= 4]
        assert len(targets) == len(set(targets)), f"some targets were built more than once: {targets}"


# ----------------------------------------------------------------------------
# Windows compiler search (pure logic, runs everywhere)


def test_find_compiler_bindir_takes_last_match_of_first_matching_pattern(monkeypatch):
    matches = {
        custom_ops._MSVC_PATTERNS[1]: ["C:/vs/2019/BuildTools/14.1/bin", "C:/vs/2022/BuildTools/14.3/bin"],
        custom_ops._MSVC_PATTERNS[2]: ["C:/vs/2022/Community/14.3/bin"],
    }
    monkeypatch.setattr(custom_ops.glob, "glob", lambda pattern: list(matches.get(pattern, [])))
    assert custom_ops._find_compiler_bindir() == "C:/vs/2022/BuildTools/14.3/bin"
    monkeypatch.setattr(custom_ops.glob, "glob", lambda pattern: [])
    assert custom_ops._find_compiler_bindir() is None


def test_missing_windows_compiler_raises(monkeypatch):
    monkeypatch.setattr(custom_ops.os, "system", lambda cmd: 1)
    monkeypatch.setattr(custom_ops.glob, "glob", lambda pattern: [])
    with pytest.raises(RuntimeError, match="Could not find MSVC/GCC/CLANG installation on this computer"):
        custom_ops._ensure_windows_compiler_on_path()


# ----------------------------------------------------------------------------
# What TORCH_CUDA_ARCH_LIST='' means to PyTorch: exactly the visible GPU's architecture.


@pytest.mark.skipif(
    not hasattr(torch.utils.cpp_extension, "_get_cuda_arch_flags"), reason="PyTorch private API not available"
)
@pytest.mark.parametrize("capability, arch", [((8, 0), "80"), ((8, 6), "86"), ((9, 0), "90")])
def test_empty_arch_list_targets_the_visible_gpu(monkeypatch, capability, arch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100"])
    flags = torch.utils.cpp_extension._get_cuda_arch_flags()
    gencodes = sorted({flag.split("=", 1)[1] for flag in flags if flag.startswith("-gencode")})
    assert gencodes == [f"arch=compute_{arch},code=compute_{arch}", f"arch=compute_{arch},code=sm_{arch}"]
