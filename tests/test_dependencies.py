"""Declared dependencies match imports: nothing imported is undeclared, nothing declared is unused, all pinned.

Imports are read with `ast` (what the code says, not what happens to be installed), and mapped to the
distributions that provide them with `importlib.metadata.packages_distributions()`.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

from tests.harness import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = ("kaixu", "tests", "bench")

#: Declared but never imported, on purpose.
NOT_IMPORTED = {
    "pytest-asyncio": "a pytest plugin, loaded by pytest itself (asyncio_mode = auto)",
    "pytest-xdist": "a pytest plugin, loaded by pytest itself (`make test` runs pytest -n)",
    "ruff": "the formatter and linter `make lint` runs",
    "mypy": "the type checker `make lint` runs",
    "types-pyyaml": "type stubs read by mypy",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(spec: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;,]+)", spec)
    assert match, f"{spec!r}: dependencies are pinned with =="
    return canonical(match[1]), match[2]


RUNTIME = dict(requirement(spec) for spec in PYPROJECT["project"]["dependencies"])
TEST = dict(requirement(spec) for spec in PYPROJECT["project"]["optional-dependencies"]["test"])


@functools.cache
def imported_modules(folder: str) -> dict[str, str]:
    """Top-level modules imported by the files under `folder`, each with one file that imports it (read once
    per run: four tests ask)."""
    root = ROOT / folder
    local = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    local |= {p.stem for p in (ROOT / "bench").glob("*.py")}  # bench scripts, imported by their own name
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or top in local:
                    continue
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@functools.cache
def installed() -> dict[str, list[str]]:
    """Which distributions provide each top-level module: one walk of the venv's metadata (0.7 s), not one
    per module asked about."""
    return packages_distributions()


def distributions(module: str) -> set[str]:
    return {canonical(d) for d in installed().get(module, [])}


def test_every_dependency_is_pinned_to_the_installed_version() -> None:
    for name, pinned in {**RUNTIME, **TEST}.items():
        assert version(name) == pinned, f"{name}: pyproject pins {pinned}, the venv has {version(name)}"


def test_kaixu_imports_only_runtime_dependencies() -> None:
    for module, where in imported_modules("kaixu").items():
        provided = distributions(module)
        assert provided & RUNTIME.keys(), f"{where} imports {module} ({provided or 'not installed'}): not declared"


def test_tests_and_bench_import_only_declared_dependencies() -> None:
    declared = RUNTIME.keys() | TEST.keys()
    for folder in ("tests", "bench"):
        for module, where in imported_modules(folder).items():
            provided = distributions(module)
            assert provided & declared, f"{where} imports {module} ({provided or 'not installed'}): not declared"


def test_every_runtime_dependency_is_imported_by_kaixu() -> None:
    used = {d for module in imported_modules("kaixu") for d in distributions(module)}
    unused = RUNTIME.keys() - used - NOT_IMPORTED.keys()
    assert not unused, f"declared for kaixu but never imported: {sorted(unused)}"


def test_every_test_dependency_is_imported_or_explained() -> None:
    used = {d for folder in ("tests", "bench") for module in imported_modules(folder) for d in distributions(module)}
    unused = TEST.keys() - used - NOT_IMPORTED.keys()
    assert not unused, f"declared for tests but never imported: {sorted(unused)}"
    assert NOT_IMPORTED.keys() <= TEST.keys(), "an exception for a package that is no longer declared"


def test_no_test_skips_on_a_missing_package() -> None:
    for path in (ROOT / "tests").rglob("*.py"):
        if path != Path(__file__):
            assert "importorskip" not in path.read_text(), f"{path.name}: import it, and declare it"
