"""The import rule of CONTRIBUTING.md ("Layout"), checked on the source text with `ast` (nothing is imported).

Imports point down: top-level scripts -> training/ -> metrics/ -> torch_utils/ -> dnnlib/. A package module may
import its own package and the packages below it, never a top-level script; a top-level script may import any
package but no other script. Imports inside functions count as much as those at the top of a module, and so do
`importlib.import_module("...")` / `__import__("...")` with a literal name.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What each package may import of ours besides itself. training/ runs the metrics at snapshots (training/config.py
# checks the metric names, training/training_loop.py computes them); metrics/ does not import training/.
ALLOWED_IMPORTS = {
    "dnnlib": set(),
    "torch_utils": {"dnnlib"},
    "metrics": {"torch_utils", "dnnlib"},
    "training": {"metrics", "torch_utils", "dnnlib"},
}
PACKAGES = tuple(ALLOWED_IMPORTS)
DYNAMIC_IMPORTERS = ("importlib.import_module", "import_module", "__import__")


def top_level_scripts(root: Path) -> set[str]:
    """Module names of the scripts in the repository root (train, generate, legacy, ...)."""
    return {path.stem for path in root.glob("*.py")}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import anywhere in the module `name` stored at `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` / `from ..y import z`
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                target = ".".join(base + ([node.module] if node.module else []))
                found.append((node.lineno, target or "."))
            else:
                found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in DYNAMIC_IMPORTERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def layout_violations(root: Path) -> list[str]:
    """One line per import that breaks the rule, as `file:line: what`."""
    scripts = top_level_scripts(root)
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imported_names(path, module_name(root, path)):
                top = target.split(".")[0]
                where = f"{path.relative_to(root)}:{line}"
                if top in scripts:
                    problems.append(f"{where}: {package}/ imports the top-level script {top}.py")
                elif top in PACKAGES and top != package and top not in ALLOWED_IMPORTS[package]:
                    problems.append(f"{where}: {package}/ imports {target}, a layer above it")
    for script in sorted(scripts):
        path = root / f"{script}.py"
        for line, target in imported_names(path, script):
            top = target.split(".")[0]
            if top in scripts and top != script:
                problems.append(f"{path.relative_to(root)}:{line}: script imports the top-level script {top}.py")
    return problems


def test_repository_follows_the_import_rule():
    problems = layout_violations(REPO)
    assert not problems, "imports that point up or into scripts:\n" + "\n".join(problems)


def test_every_package_has_a_layer():
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    assert packages == set(PACKAGES), f"top-level packages {sorted(packages)} vs layers {sorted(PACKAGES)}"


# ---------------------------------------------------------------------------------------------------------------
# The checker itself, on a small fake tree.


def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("", encoding="utf-8")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


ALLOWED_CASES = {
    "training_imports_metrics": {"training/loop.py": "from metrics import metric_main\n"},
    "same_layer_in_a_function": {"training/pickles.py": "def f():\n    from training import tf_conversion\n"},
    "relative_within_package": {"torch_utils/ops/op.py": "from .. import misc\nfrom . import fma\n"},
    "torch_utils_imports_dnnlib": {"torch_utils/misc.py": "import dnnlib.util\n"},
    "script_imports_packages": {"train.py": "import dnnlib\nfrom training import config\nfrom metrics import m\n"},
    "dynamic_name": {"dnnlib/util.py": "import importlib\ndef f(name):\n    return importlib.import_module(name)\n"},
}

VIOLATION_CASES = {
    "dnnlib_imports_ours": ({"dnnlib/util.py": "def f():\n    import torch_utils\n"}, "dnnlib/util.py:2"),
    "torch_utils_imports_training": ({"torch_utils/misc.py": "from training import networks\n"}, "a layer above"),
    "metrics_imports_training": ({"metrics/m.py": "from training.networks import Generator\n"}, "a layer above"),
    "package_imports_script_lazily": (
        {"legacy.py": "", "training/loop.py": "def load():\n    import legacy\n"},
        "training/loop.py:2: training/ imports the top-level script legacy.py",
    ),
    "package_imports_script_from": (
        {"generate.py": "", "metrics/m.py": "from generate import parse_range\n"},
        "top-level script generate.py",
    ),
    "dynamic_import_of_script": (
        {"legacy.py": "", "training/x.py": "import importlib\nimportlib.import_module('legacy')\n"},
        "top-level script legacy.py",
    ),
    "script_imports_script": (
        {"generate.py": "", "projector.py": "def f():\n    from generate import num_range\n"},
        "projector.py:2: script imports the top-level script generate.py",
    ),
}


@pytest.mark.parametrize("case", sorted(ALLOWED_CASES))
def test_checker_allows(tmp_path, case):
    assert layout_violations(_tree(tmp_path, ALLOWED_CASES[case])) == []


@pytest.mark.parametrize("case", sorted(VIOLATION_CASES))
def test_checker_reports(tmp_path, case):
    files, expected = VIOLATION_CASES[case]
    problems = layout_violations(_tree(tmp_path, files))
    assert len(problems) == 1 and expected in problems[0], problems
