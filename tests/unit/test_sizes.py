"""The package keeps its rooms small: no module over 450 lines, no function over 100 (``tools/sizes.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "sizes.py"


def _sizes():
    spec = importlib.util.spec_from_file_location("sizes_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sizes_tool"] = module
    spec.loader.exec_module(module)
    return module


def test_no_module_and_no_function_is_over_the_limits():
    sizes = _sizes()
    over = [f"{size.name}: {size.lines} lines" for size in sizes.over_limits()]
    assert over == [], "split these (python tools/sizes.py --limits-only):\n" + "\n".join(over)


def test_the_tool_measures_what_it_reads(tmp_path):
    sizes = _sizes()
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(sizes.MAX_FUNCTION_LINES))
    (package / "big.py").write_text(f"class C:\n    @staticmethod\n    def long():\n{body}\n")

    over = sizes.over_limits(package)

    assert [(size.name, size.lines) for size in over] == [("pkg/big.py:C.long", sizes.MAX_FUNCTION_LINES + 2)]
