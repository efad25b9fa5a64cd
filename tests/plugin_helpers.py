"""Shared by the native-plugin build tests: run build processes and check that each plugin was built once."""

import subprocess
import sys


def run_python_processes(script, env, count, timeout_s):
    """Run `script` in `count` concurrent Python processes; assert each exits 0 and return their outputs."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(count)
    ]
    outputs = [proc.communicate(timeout=timeout_s)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"build process failed:\n{out}"
    return outputs


def lines_starting_with(output, prefix):
    return [line for line in output.splitlines() if line.startswith(prefix)]


def check_single_build(extensions_dir, module_name):
    """Exactly one cached source directory, one shared library and one compile per object file."""
    root = extensions_dir / module_name
    entries = sorted(p.name for p in root.iterdir())
    assert not [e for e in entries if e.startswith("srctmp-")], f"leftover temporary directories: {entries}"
    cached = [p for p in root.iterdir() if p.is_dir()]
    assert len(cached) == 1, f"expected one cached build directory in {root}, found {entries}"
    libraries = list(cached[0].glob("*.so")) + list(cached[0].glob("*.pyd"))
    assert len(libraries) == 1, f"expected one built library in {cached[0]}, found {libraries}"
    ninja_log = cached[0] / ".ninja_log"
    if ninja_log.exists():
        targets = [line.split("\t")[3] for line in ninja_log.read_text().splitlines()[1:] if line.count("\t") >= 4]
        assert len(targets) == len(set(targets)), f"some targets were built more than once: {targets}"
    return libraries[0]
