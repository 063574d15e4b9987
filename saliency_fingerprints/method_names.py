"""The short names tables and figures show for the saliency methods (Grad, SG, IG, MP, ...),
without importing the methods.

A method declares its short name once, in its class's decorator,
``@register("smoothgrad", short="SG")`` (:mod:`.saliency.base`). Importing the methods imports
torch (~3 s on small CPUs), which a table or figure job does not otherwise need; so this module
reads the decorators from the source of ``saliency_fingerprints/saliency/`` instead (a few
milliseconds). tests/test_method_registry.py checks that it finds exactly the registry of the
imported package. A method registered at run time elsewhere (a test's throw-away method) is
shown by its full name.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

METHODS_DIR = Path(__file__).resolve().parent / "saliency"


def _declared(tree: ast.AST) -> dict[str, str]:
    """``{name: short}`` of every ``@register("name", short="short")`` decorator in ``tree``."""
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if not (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Name)
                and decorator.func.id == "register"
            ):
                continue
            args = [*decorator.args, *(k.value for k in decorator.keywords if k.arg == "short")]
            name, short = (a.value if isinstance(a, ast.Constant) else None for a in args[:2])
            if isinstance(name, str) and isinstance(short, str):
                found[name] = short
    return found


@functools.cache
def short_names() -> dict[str, str]:
    """``{method: short name}`` of every method class in the saliency package."""
    found: dict[str, str] = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        found.update(_declared(ast.parse(path.read_text(), filename=str(path))))
    return found


def short_name(method: str) -> str:
    """The name tables and figures show for ``method`` (its full name if it has no short one)."""
    return short_names().get(method, method)
