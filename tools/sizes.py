"""Print the size of every module and function in the package, largest first, and the ones over the limits.

Run ``python tools/sizes.py`` (``--limits-only`` prints only what is over). The limits are the
project's room sizes: a module a reader can hold in mind, a function that fits a screen;
``tests/unit/test_sizes.py`` keeps them.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

#: Most lines one module of the package may have.
MAX_MODULE_LINES = 450
#: Most lines one function or method may have (from its ``def`` line to its last line).
MAX_FUNCTION_LINES = 100

PACKAGE = Path(__file__).resolve().parent.parent / "aitune_triton"


@dataclass(frozen=True)
class Size:
    """One module or function and its length in lines."""

    name: str
    lines: int


def module_sizes(package: Path = PACKAGE) -> list[Size]:
    """Every ``.py`` file under ``package`` with its line count, largest first."""
    sizes = [Size(str(path.relative_to(package.parent)), len(path.read_text().splitlines())) for path in package.rglob("*.py")]
    return sorted(sizes, key=lambda size: -size.lines)


def function_sizes(package: Path = PACKAGE) -> list[Size]:
    """Every function and method under ``package`` (``file:Class.name``) with its line count, largest first."""
    sizes: list[Size] = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        sizes.extend(_functions(tree, f"{path.relative_to(package.parent)}:"))
    return sorted(sizes, key=lambda size: -size.lines)


def _functions(node: ast.AST, prefix: str) -> list[Size]:
    found: list[Size] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([child.lineno] + [decorator.lineno for decorator in child.decorator_list])
            found.append(Size(prefix + child.name, (child.end_lineno or child.lineno) - start + 1))
            found.extend(_functions(child, f"{prefix}{child.name}."))
        elif isinstance(child, ast.ClassDef):
            found.extend(_functions(child, f"{prefix}{child.name}."))
    return found


def over_limits(package: Path = PACKAGE) -> list[Size]:
    """Modules over :data:`MAX_MODULE_LINES` and functions over :data:`MAX_FUNCTION_LINES`."""
    modules = [size for size in module_sizes(package) if size.lines > MAX_MODULE_LINES]
    functions = [size for size in function_sizes(package) if size.lines > MAX_FUNCTION_LINES]
    return modules + functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits-only", action="store_true", help="print only what is over the limits")
    parser.add_argument("--top", type=int, default=15, help="how many of the largest modules and functions to print")
    arguments = parser.parse_args()
    if not arguments.limits_only:
        for title, sizes in (("modules", module_sizes()), ("functions", function_sizes())):
            print(f"largest {title}:")
            for size in sizes[: arguments.top]:
                print(f"  {size.lines:5d}  {size.name}")
    over = over_limits()
    print(f"over the limits ({MAX_MODULE_LINES} lines a module, {MAX_FUNCTION_LINES} a function): {len(over)}")
    for size in over:
        print(f"  {size.lines:5d}  {size.name}")


if __name__ == "__main__":
    main()
