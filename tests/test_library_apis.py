"""paygate uses only the public APIs of its libraries: nothing of ours imports a library's private module, nor
reaches pynng's C bindings (`pynng.lib`, `pynng.ffi`: outside pynng's documented API)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRODUCT = ("engine", "journal", "edge", "actors", "bench", "tools")
BINDINGS = {"pynng.lib", "pynng.ffi"}


def private_uses(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"] if f"{node.value.id}.{node.attr}" in BINDINGS else []
        found += [name for name in names if name in BINDINGS or name.split(".")[0] not in PRODUCT and any(
            part.startswith("_") and not part.startswith("__") for part in name.split("."))]
    return found


def test_no_product_module_uses_a_private_part_of_a_library():
    found = {str(path.relative_to(ROOT)): uses for folder in PRODUCT for path in sorted((ROOT / folder).rglob("*.py"))
             if (uses := private_uses(path))}
    assert found == {}
