"""kaixu's exceptions have one root (kaixu/exceptions.py) that carries the answer each means: status, type, code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from kaixu.exceptions import KaixuError
from kaixu.formats.errors import FormatError
from kaixu.reliability.upstream import ConnectError
from kaixu.routing.resolve import RouteRefused

PACKAGE = Path(__file__).resolve().parent.parent / "kaixu"


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in kaixu/ whose name or a base's name ends in Error or Exception."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [ast.unparse(base) for base in node.bases]
            if any(b.endswith(("Error", "Exception")) for b in bases) or "KaixuError" in bases:
                found.append((module, node.name))
    return found


def test_every_exception_class_derives_from_the_root() -> None:
    classes = [(m, c) for m, c in _exception_classes() if m != "kaixu.exceptions"]
    assert len(classes) >= 15, classes
    outside = [f"{m}.{c}" for m, c in classes if not issubclass(getattr(importlib.import_module(m), c), KaixuError)]
    assert outside == []


def test_the_root_carries_status_type_and_code_overridable_per_instance() -> None:
    assert (KaixuError.status, KaixuError.type, KaixuError.code) == (500, "api_error", "internal_error")
    refused = RouteRefused(403, "no", "permission_error", "model_not_allowed")
    assert (refused.status, refused.type, refused.code, str(refused)) == (
        403,
        "permission_error",
        "model_not_allowed",
        "no",
    )
    assert (RouteRefused.status, KaixuError("x", code="y").code) == (500, "y")


def test_a_second_base_is_kept_for_callers_that_catch_it() -> None:
    assert issubclass(FormatError, ValueError) and issubclass(ConnectError, OSError)
    connect = ConnectError(111, "refused")
    assert connect.errno == 111 and connect.status == 502 and connect.code == "upstream_connect_error"
