"""The input contract of a built artifact: see :mod:`aitune_triton.served.contract`.

It lives in the served package (it runs inside Triton's Python backend too); this module keeps the
import path ``aitune_triton.contract`` for in-process code.
"""

from aitune_triton.served.contract import INDEX_HINT, IndexRange, InputContract, ShapeProblem

__all__ = ["INDEX_HINT", "IndexRange", "InputContract", "ShapeProblem"]
