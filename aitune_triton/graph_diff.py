"""What differs between a call and the graph specs it failed to match, for GraphSpecMismatchError.

A graph spec's ``description`` (``input_ids: tensor(int64, rank=2), use_cache: const(true)``) lists
every input leaf it expects with its kind; a call describes itself the same way. Comparing the two
leaf by leaf names the arguments missing or extra, the dtypes and ranks that differ and the
constants of other values, against the graph specs with the fewest differences.
"""

from __future__ import annotations

import re
from typing import Sequence

from aitune_triton.spec import CallStructure

__all__ = ["describe_leaves", "leaf_differences", "mismatch_message"]

# A leaf description starts after ", " with "path: tensor(" or "path: const".
_LEAF_START = re.compile(r", (?=[^,:() ]+: (?:tensor\(|const))")
_TENSOR = re.compile(r"tensor\((?P<dtype>[^,]+), rank=(?P<rank>\d+)\)")


def describe_leaves(description: str) -> dict[str, str]:
    """Leaf path -> kind (``tensor(int64, rank=2)``, ``const(true)``) of a graph spec description."""
    leaves: dict[str, str] = {}
    for part in _LEAF_START.split(description) if description else []:
        path, _, kind = part.partition(": ")
        leaves[path] = kind
    return leaves


def _difference(path: str, given: str, expected: str) -> str:
    given_tensor, expected_tensor = _TENSOR.fullmatch(given), _TENSOR.fullmatch(expected)
    if given_tensor and expected_tensor:
        parts = []
        if given_tensor["dtype"] != expected_tensor["dtype"]:
            parts.append(f"dtype {given_tensor['dtype']}, expected {expected_tensor['dtype']}")
        if given_tensor["rank"] != expected_tensor["rank"]:
            parts.append(f"rank {given_tensor['rank']}, expected {expected_tensor['rank']}")
        return f"{path}: " + "; ".join(parts)
    if given.startswith("const") and expected.startswith("const"):
        return f"{path}: constant {given[6:-1] or '?'} differs, expected {expected[6:-1] or '?'}"
    return f"{path}: {given} given, expected {expected}"


def leaf_differences(given: dict[str, str], expected: dict[str, str]) -> list[str]:
    """One line per leaf that differs: missing, extra, or of another dtype, rank or constant value."""
    lines = [f"missing argument {path} ({kind})" for path, kind in expected.items() if path not in given]
    lines += [f"extra argument {path} ({kind})" for path, kind in given.items() if path not in expected]
    lines += [_difference(path, kind, expected[path]) for path, kind in given.items() if path in expected and kind != expected[path]]
    return lines


def mismatch_message(headline: str, call: CallStructure, graphs: Sequence[tuple[str, str]], strict: bool = True) -> str:
    """``headline``, then the call's leaves and what differs from the closest graph spec(s).

    Args:
        headline: The first line (``Module 'x': the call matches no tuned graph spec.``).
        call: The flattened call.
        graphs: ``(graph spec name, description)`` of every graph spec it could have matched.
        strict: Whether constants are part of the match (the module's ``strict``).

    Returns:
        The message: the call, then per closest graph spec (fewest differing leaves; up to 3 tied)
        the differences, then every graph spec's full description.
    """
    given = dict(zip(call.flat.paths, call.flat.leaf_descriptions(strict)))
    scored = []
    for name, description in graphs:
        expected = describe_leaves(description)
        if not strict:
            expected = {path: "const" if kind.startswith("const") else kind for path, kind in expected.items()}
        scored.append((len(leaf_differences(given, expected)), name, leaf_differences(given, expected)))
    lines = [headline, f"  call: {call.describe() or '(no arguments)'}"]
    if scored:
        best = min(score for score, _, _ in scored)
        for _, name, differences in [entry for entry in scored if entry[0] == best][:3]:
            if not differences:
                differences = ["the same leaves, but nested in other containers (a list for a tuple, other dict keys)"]
            lines.append(f"  differences from {name} (closest):")
            lines += [f"    - {line}" for line in differences]
    lines.append("  graph specs:" if graphs else "  no graph specs.")
    lines += [f"    {name}: {description}" for name, description in graphs]
    return "\n".join(lines)
