"""Product code (engine/, journal/, edge/, actors/) holds no `assert` statement and never reads `__debug__`: python -O
(PYTHONOPTIMIZE) strips both, so a check or a piece of work inside one would vanish in a deployment that sets it.
Checks use engine/check.py `check()` or explicit errors. `make test` also runs a few suites under -O.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("engine", "journal", "edge", "actors")


def stripped_by_optimize(source: str, name: str) -> list[str]:
    """`name:line` of every assert statement and every read of `__debug__` in `source`."""
    return [f"{name}:{node.lineno}" for node in ast.walk(ast.parse(source, name))
            if isinstance(node, ast.Assert) or (isinstance(node, ast.Name) and node.id == "__debug__")]


def test_product_code_has_no_assert_and_no_debug_branch():
    files = [path for package in PRODUCT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert {path.relative_to(ROOT).parts[0] for path in files} == set(PRODUCT_PACKAGES)
    found = [line for path in files
             for line in stripped_by_optimize(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "python -O strips these: use engine/check.py check() or an explicit error"


def test_the_scan_finds_what_optimize_strips():
    source = "def f(x):\n    assert x > 0, 'positive'\n    if __debug__:\n        x += 1\n    return x\n"
    assert stripped_by_optimize(source, "m.py") == ["m.py:2", "m.py:3"]
    assert stripped_by_optimize("def f(x):\n    check(x > 0, 'positive')\n", "m.py") == []
