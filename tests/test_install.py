"""`pip install .` and `pip install -e .` into fresh virtual environments, checked from outside the clone.

The venvs see the running interpreter's packages (torch and requirements.txt are not installed again), so what these
tests exercise is our packaging: the build backend (`pip install .` builds in pip's isolated build environment, as a
user's does; it needs setuptools from the package registry or pip's cache), the packages and top-level modules, the
CUDA sources as package data, the commands and the metadata read from pyproject.toml and requirements.txt.
The sources are copied to a temporary folder first, so that the build leaves nothing (build/, *.egg-info) in the clone.
"""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DIST_NAME = PYPROJECT["project"]["name"]
ENTRY_POINTS = PYPROJECT["project"]["scripts"]  # command name -> "module:click_command"
PY_MODULES = PYPROJECT["tool"]["setuptools"]["py-modules"]
PACKAGES = ["dnnlib", "torch_utils", "torch_utils.ops", "training", "metrics"]
NATIVE_SUFFIXES = (".cu", ".cpp", ".h")
NATIVE_SOURCES = sorted(p.name for p in (REPO / "torch_utils" / "ops").iterdir() if p.suffix in NATIVE_SUFFIXES)
# Not needed to build or install; tests/ alone is most of the tree's size.
NOT_COPIED = {".git", "tests", "build", "dist", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
PIP_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 180


def _entry_module(command: str) -> str:
    return ENTRY_POINTS[command].split(":")[0]


def _present(command: str) -> bool:
    return (REPO / f"{_entry_module(command)}.py").is_file()


def _skip_if_absent(command: str):
    if not _present(command):
        pytest.skip(f"{_entry_module(command)}.py is not in this tree")


def _click_commands(path: Path) -> set[str]:
    """Names of the module-level functions of `path` decorated with `@click.command(...)`."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) == "click.command":
                    names.add(node.name)
    return names


# ---------------------------------------------------------------------------------------------------------------
# The configuration itself (fast).


def test_every_tool_script_is_a_command():
    """Every top-level script with a click command is installed as a module and has a command, and back."""
    scripts = {p.stem for p in REPO.glob("*.py") if _click_commands(p)}
    declared = {_entry_module(command) for command in ENTRY_POINTS}
    assert scripts <= declared, f"top-level click scripts without a command in pyproject.toml: {scripts - declared}"
    assert declared <= set(PY_MODULES), f"commands whose module is not in py-modules: {declared - set(PY_MODULES)}"
    assert all(re.fullmatch(r"stylegan2-[a-z-]+", command) for command in ENTRY_POINTS), sorted(ENTRY_POINTS)


@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_entry_point_names_the_click_command(command):
    _skip_if_absent(command)
    module, attr = ENTRY_POINTS[command].split(":")
    assert attr in _click_commands(REPO / f"{module}.py"), f"{command}: {module}.{attr} is not a @click.command"


def test_dependencies_come_from_requirements_txt():
    project = PYPROJECT["project"]
    assert "dependencies" not in project and "dependencies" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}


# ---------------------------------------------------------------------------------------------------------------
# Helpers for the installs.


def _clean_env() -> dict:
    """The environment for commands in a venv: nothing that would put the clone on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(args, cwd, timeout=COMMAND_TIMEOUT_S) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _copy_sources(dest: Path) -> Path:
    shutil.copytree(
        REPO, dest, ignore=lambda _dir, names: [n for n in names if n in NOT_COPIED or n.endswith(".egg-info")]
    )
    return dest


def _make_venv(path: Path) -> Path:
    """A venv without pip of its own that sees the running interpreter's packages (pip and torch among them).

    `--system-site-packages` covers a base interpreter; the .pth file covers a test run from inside another venv.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(path)], check=True)
    python = path / "bin" / "python"
    venv_site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=path).strip()
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(venv_site, "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer), encoding="utf-8")
    return python


def _pip_install(python: Path, *args, cwd: Path) -> None:
    _run([python, "-m", "pip", "install", "--quiet", *args], cwd=cwd, timeout=PIP_TIMEOUT_S)


_PROBE = """
import importlib, importlib.metadata, json, sys
dist, names = sys.argv[1], sys.argv[2:]
modules = {name: importlib.import_module(name) for name in names}
from torch_utils.ops import bias_act, upfirdn2d
plugins = {op.__name__: [op._plugin.source_dir, op._plugin.sources + op._plugin.headers]
           for op in (bias_act, upfirdn2d)}
print(json.dumps({
    "files": {name: module.__file__ for name, module in modules.items()},
    "plugins": plugins,
    "version": importlib.metadata.version(dist),
    "requires": importlib.metadata.requires(dist),
    "legacy_api": all(hasattr(modules["legacy"], n) for n in ("load_network_pkl", "UnsupportedPickleError")),
}))
"""


def _probe(python: Path, cwd: Path) -> dict:
    """Import the packages and the present top-level modules in the venv; where they come from, and the metadata."""
    modules = PACKAGES + [m for m in PY_MODULES if (REPO / f"{m}.py").is_file()]
    return json.loads(_run([python, "-c", _PROBE, DIST_NAME, *modules], cwd=cwd))


def _requirement_key(line: str) -> tuple[str, frozenset]:
    """(normalised name, set of specifiers) of one requirement line, so that the order of specifiers is ignored."""
    match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*(.*)", line.strip())
    assert match, f"unexpected requirement line: {line!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, frozenset(s.replace(" ", "") for s in match.group(2).split(",") if s.strip())


def _requirements_txt() -> set:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return {_requirement_key(line.split("#")[0]) for line in lines if line.split("#")[0].strip()}


def _under(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


# ---------------------------------------------------------------------------------------------------------------
# pip install .


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, its site-packages, a working folder outside the clone) after `pip install <copy of the clone>`."""
    root = tmp_path_factory.mktemp("install")
    source = _copy_sources(root / "src")
    python = _make_venv(root / "venv")
    outside = root / "elsewhere"
    outside.mkdir()
    _pip_install(python, str(source), cwd=outside)
    shutil.rmtree(source)  # nothing may still point into the sources
    venv_site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=outside).strip()
    )
    return python, venv_site, outside


@pytest.mark.slow
def test_install_imports_from_the_venv(installed):
    python, venv_site, outside = installed
    probe = _probe(python, outside)
    for name, path in probe["files"].items():
        assert _under(path, venv_site), f"{name} imported from {path}, not from the venv's {venv_site}"
    assert probe["legacy_api"]
    assert probe["version"] == PYPROJECT["project"]["version"]
    assert {_requirement_key(r) for r in probe["requires"]} == _requirements_txt()


@pytest.mark.slow
def test_install_ships_the_cuda_sources(installed):
    python, venv_site, outside = installed
    shipped = sorted(p.name for p in (venv_site / "torch_utils" / "ops").iterdir() if p.suffix in NATIVE_SUFFIXES)
    assert shipped == NATIVE_SOURCES and any(name.endswith(".cu") for name in shipped)
    for op, (source_dir, names) in _probe(python, outside)["plugins"].items():
        assert _under(source_dir, venv_site), f"{op}: plugin sources looked up in {source_dir}"
        missing = [n for n in names if not (Path(source_dir) / n).is_file()]
        assert not missing, f"{op}: plugin sources missing from the install: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_install_command_help(installed, command):
    _skip_if_absent(command)
    python, _venv_site, outside = installed
    out = _run([python.parent / command, "--help"], cwd=outside)
    assert out.startswith(f"Usage: {command} [OPTIONS]"), out[:200]


# ---------------------------------------------------------------------------------------------------------------
# pip install -e .


@pytest.mark.slow
def test_editable_install(tmp_path):
    source = _copy_sources(tmp_path / "src")
    python = _make_venv(tmp_path / "venv")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _pip_install(python, "-e", str(source), cwd=outside)
    probe = _probe(python, outside)
    for name, path in probe["files"].items():
        assert _under(path, source), f"{name} imported from {path}, not from the editable sources {source}"
    for op, (source_dir, _names) in probe["plugins"].items():
        assert _under(source_dir, source), f"{op}: plugin sources looked up in {source_dir}"
    out = _run([python.parent / "stylegan2-generate", "--help"], cwd=outside)
    assert out.startswith("Usage: stylegan2-generate [OPTIONS]")
    # An edit of the sources is live without reinstalling.
    (source / "dnnlib" / "__init__.py").open("a", encoding="utf-8").write("\nEDITABLE_MARKER = 1\n")
    assert _run([python, "-c", "import dnnlib; print(dnnlib.EDITABLE_MARKER)"], cwd=outside).strip() == "1"


# ---------------------------------------------------------------------------------------------------------------
# The source distribution (what `python -m build` or an index would build the wheel from).


@pytest.mark.slow
def test_sdist_has_what_the_build_reads(tmp_path):
    try:
        setuptools_major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        setuptools_major = 0
    if setuptools_major < 64:
        pytest.skip("building an sdist here needs setuptools>=64 in this interpreter")
    source = _copy_sources(tmp_path / "src")
    script = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = _run([sys.executable, "-c", script, tmp_path / "dist"], cwd=source).strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    expected = {"pyproject.toml", "requirements.txt", "README.md"}
    expected |= {f"torch_utils/ops/{n}" for n in NATIVE_SOURCES}
    expected |= {f"{m}.py" for m in PY_MODULES if (REPO / f"{m}.py").is_file()}
    assert expected <= members, f"missing from the sdist: {sorted(expected - members)}"
