"""Names that are safe as file names and Triton model names."""

from __future__ import annotations

import re

from aitune_triton.errors import InvalidNameError

__all__ = ["sanitize_name", "validate_model_name"]

_ALLOWED = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Names become directory names with suffixes (``<name>.graph_0``, ``<name>-samples-<id>``); file
#: systems allow 255 bytes per name.
MAX_NAME_LENGTH = 128


def sanitize_name(name: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_.-]`` with ``_``, and a leading ``.`` too (a
    hidden directory is no Triton model), so the result is a valid model name.

    Raises:
        InvalidNameError: ``name`` is not a string, is empty, consists of dots only (it would
            name the current or parent directory), or is longer than ``MAX_NAME_LENGTH``.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"name: expected a string, got {type(name).__name__}")
    if not name or set(name) == {"."}:
        raise InvalidNameError(f"name: expected a non-empty name that is not only dots, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"name: expected at most {MAX_NAME_LENGTH} characters (it names files and models), got {len(name)}"
        )
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned


def validate_model_name(name: str, argument: str = "name") -> str:
    """Check a Triton model name given by the user, without changing it.

    Triton maps model names to directories of the model repository, so a name must be one path
    component: letters, digits, ``_``, ``.`` and ``-``, not starting with a dot.

    Raises:
        InvalidNameError: the name has other characters (``/`` for instance), starts with ``.``
            (``..`` included) or is empty.
    """
    if not isinstance(name, str) or not _ALLOWED.match(name) or name.startswith(".") or len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{argument}: expected a Triton model name of at most {MAX_NAME_LENGTH} letters, digits, '_', '.', '-' "
            f"that does not start with '.', got {name!r}. Pick a name such as 'my_model'."
        )
    return name
