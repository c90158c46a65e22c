"""Call flattening: a call bound to the forward signature, flattened, and keyed by its structure.

The bound arguments are flattened with ``torch.utils._pytree``; the tree structure plus, per leaf,
the tensor dtype and rank (or the constant value of a non-tensor leaf) form the call's *key*. Calls
with the same key share one graph spec; calls that differ only in tensor sizes do too.
:class:`CallLayouts` gives the same result for repeated calls without binding them again.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton.spec.flat_tree import FlatTree, _flatten
from aitune_triton.spec.outputs import _PLAIN_LEAVES, _register_output_containers
from aitune_triton.spec.signature import ForwardSignature

__all__ = ["CallLayouts", "CallStructure", "StoredCall", "flatten_call"]


@dataclass
class CallStructure:
    """One call bound to a forward signature and flattened.

    Attributes:
        args: Positional arguments as given.
        kwargs: Keyword arguments as given.
        flat: The bound arguments flattened; paths start with the parameter name.
        key: Identifies the call's graph spec: tree structure plus dtype and rank of each tensor
            leaf (and value of each constant leaf when strict).
    """

    args: tuple
    kwargs: dict
    flat: FlatTree
    key: str

    def describe(self) -> str:
        """Human-readable structure, e.g. ``input_ids: tensor(int64, rank=2), flag: const(true)``."""
        return ", ".join(f"{p}: {d}" for p, d in zip(self.flat.paths, self.flat.leaf_descriptions()))

    def with_tensors(self, signature: ForwardSignature, tensors: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of the same call with its tensor leaves replaced, in flattening order."""
        iterator = iter(tensors)
        leaves = [next(iterator) if leaf is None else leaf for leaf in self.flat.template]
        return signature.unbind(pytree.tree_unflatten(leaves, self.flat.treespec))


class StoredCall(CallStructure):
    """A recorded call that is run more than once (tuning, the checks against eager).

    Each read of :attr:`args` and :attr:`kwargs` rebuilds them from the flat leaves with
    ``torch.utils._pytree``, so every container among them (a ``transformers`` cache) is a new
    object each time: a forward that updates an argument in place (a cache filled with the step's
    keys and values) runs each time on the call as it was recorded, never on what an earlier run
    left in it. Tensor leaves are shared, not copied.

    Args:
        signature: The module's forward signature (to turn the bound arguments back into a call).
        call: The flattened call; only its leaves, structure and key are kept.
    """

    def __init__(self, signature: ForwardSignature, call: CallStructure):
        self._signature = signature
        self.flat = call.flat
        self.key = call.key

    def _rebuilt(self) -> tuple[tuple, dict]:
        return self._signature.unbind(pytree.tree_unflatten(list(self.flat.leaves), self.flat.treespec))

    @property
    def args(self) -> tuple:  # type: ignore[override]  # read-only: rebuilt on each read
        """Positional arguments, rebuilt with new containers."""
        return self._rebuilt()[0]

    @property
    def kwargs(self) -> dict:  # type: ignore[override]  # read-only: rebuilt on each read
        """Keyword arguments, rebuilt with new containers."""
        return self._rebuilt()[1]


def _treespec_text(treespec: pytree.TreeSpec) -> str:
    try:
        tree = json.loads(pytree.treespec_dumps(treespec))
    except Exception:  # an unregistered container still gets a stable key from its repr
        tree = repr(treespec)
    return json.dumps(tree, separators=(",", ":"))


_cached_treespec_text = functools.lru_cache(maxsize=1024)(_treespec_text)


def _treespec_key(treespec: pytree.TreeSpec) -> str:
    """Compact JSON of a call's structure; cached, since every tuned call computes its key."""
    try:
        return _cached_treespec_text(treespec)
    except TypeError:  # a node context that cannot be hashed
        return _treespec_text(treespec)


def flatten_call(signature: ForwardSignature, args: tuple, kwargs: dict, strict: bool = True) -> CallStructure:
    """Bind and flatten a call and compute its graph spec key.

    Argument containers that hold tensors (a ``transformers`` cache passed as ``past_key_values``,
    a dataclass) are registered as :func:`flatten_output` registers them, so their tensors are
    inputs of the graph, not a constant baked into it. A ``transformers`` cache is registered even
    when it is empty (the first step of ``generate()``): it then flattens to no leaves, and each
    rebuild of the call makes a new empty cache.

    Raises:
        TypeError: the arguments do not fit the signature.
    """
    bound = signature.bind(args, kwargs)
    flat = _flatten(bound, root=None)
    if any(not isinstance(leaf, _PLAIN_LEAVES) and leaf is not None for leaf in flat.leaves):
        if _register_output_containers(bound):
            flat = _flatten(bound, root=None)
    leaves = json.dumps(flat.leaf_descriptions(strict), separators=(",", ":"))
    key = f'{{"tree":{_treespec_key(flat.treespec)},"leaves":{leaves}}}'
    return CallStructure(args, kwargs, flat, key)


class _NoFastPath(Exception):
    """A call :class:`CallLayouts` cannot describe cheaply; it takes :func:`flatten_call`."""


#: Constant leaves whose type and ``==`` decide :func:`flatten_call`'s key (and the binding, which
#: drops a scalar passed with its default value) exactly: ``(type, value)`` identifies them. Floats
#: also carry their sign (``-0.0 == 0.0``, but their JSON differs); other types (subclasses of
#: these included, such as an ``IntEnum``) take the slow path.
_FAST_SCALARS = frozenset({bool, int, str, torch.dtype, torch.device})


def _fingerprint(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A hashable description of ``value``'s structure (tensor dtype and rank, constant values),
    appending its tensors to ``tensors`` in traversal order.

    Raises:
        _NoFastPath: ``value`` holds a leaf outside tensors, None and :data:`_FAST_SCALARS` (and
            floats), or a container that is not a pytree node.
    """
    cls = type(value)
    if cls is torch.Tensor or isinstance(value, torch.Tensor):
        tensors.append(value)
        return (value.dtype, value.dim())
    if value is None:
        return None
    if cls in _FAST_SCALARS:
        return (cls, value)
    if cls is float:
        if value != value:  # NaN: equal to no other NaN, so its layout would never be found again
            raise _NoFastPath
        return (cls, value, math.copysign(1.0, value))
    if cls is tuple or cls is list:
        return (cls, tuple([_fingerprint(item, tensors) for item in value]))
    if cls is dict:
        if not all(type(key) is str for key in value):  # 1 == True as keys, yet their JSON differs
            raise _NoFastPath
        return (cls, tuple(value), tuple([_fingerprint(item, tensors) for item in value.values()]))
    if pytree._get_node_type(value) in pytree.SUPPORTED_NODES:  # a namedtuple, a dataclass, a cache...
        leaves, treespec = pytree.tree_flatten(value)
        return (treespec, tuple([_fingerprint(leaf, tensors) for leaf in leaves]))
    raise _NoFastPath


@dataclass(frozen=True)
class _Layout:
    """What :func:`flatten_call` gave for one argument structure, to fill with a later call's tensors."""

    key: str
    treespec: pytree.TreeSpec
    paths: tuple[str, ...]
    template: tuple[Any, ...]  # the flat leaves, None in each tensor slot
    slots: tuple[int, ...]  # positions of the tensor leaves among the flat leaves
    order: tuple[int, ...]  # per tensor slot, its position among the fingerprint's tensors

    @classmethod
    def of(cls, call: CallStructure, tensors: Sequence[torch.Tensor]) -> "_Layout | None":
        """The layout of ``call``, whose tensors the fingerprint found as ``tensors``; None when a
        flat tensor leaf cannot be told apart by identity (the same tensor passed twice) or is none
        of them."""
        position = {id(tensor): i for i, tensor in enumerate(tensors)}
        if len(position) != len(tensors):
            return None
        slots, order = [], []
        for slot, leaf in enumerate(call.flat.leaves):
            if isinstance(leaf, torch.Tensor):
                if id(leaf) not in position:
                    return None
                slots.append(slot)
                order.append(position[id(leaf)])
        template = tuple(None if isinstance(leaf, torch.Tensor) else leaf for leaf in call.flat.leaves)
        return cls(call.key, call.flat.treespec, tuple(call.flat.paths), template, tuple(slots), tuple(order))

    def call(self, args: tuple, kwargs: dict, tensors: Sequence[torch.Tensor]) -> CallStructure:
        if len(self.slots) == len(self.template):  # every leaf a tensor: the common case
            leaves = [tensors[i] for i in self.order]
        else:
            leaves = list(self.template)
            for slot, i in zip(self.slots, self.order):
                leaves[slot] = tensors[i]
        return CallStructure(args, kwargs, FlatTree(self.treespec, leaves, list(self.paths)), self.key)


class CallLayouts:
    """:func:`flatten_call` for repeated calls: a call whose argument structure was seen before
    reuses that call's key, leaf paths and bound layout.

    A call is described by its *fingerprint*: the positional count, the keyword names in the order
    given, per argument its nesting (tuples, lists, dicts with string keys, other pytree nodes by
    their ``torch.utils._pytree`` structure), and per leaf the tensor dtype and rank or the
    constant's type and value. Calls with equal fingerprints bind and flatten alike, so the first
    one runs :func:`flatten_call` and the later ones only put their tensors into its layout (no
    ``inspect.Signature.bind``, key paths or ``json.dumps``). Calls holding any other leaf (an
    object, an ``Enum``, a numpy array), the same tensor twice, or a structure that cannot be
    hashed (or a NaN) always take :func:`flatten_call`, as do calls it refuses (their error is
    its error).

    Args:
        signature: The module's forward signature.
        strict: As for :func:`flatten_call`.
        capacity: Layouts kept; when full, the oldest is dropped for a new one (constants that
            change on every call, as in a non-strict module, cycle through it). 0 turns it off.
    """

    def __init__(self, signature: ForwardSignature, strict: bool = True, capacity: int = 256):
        self.signature = signature
        self.strict = strict
        self.capacity = capacity
        self._layouts: dict[Any, _Layout] = {}

    def __len__(self) -> int:
        return len(self._layouts)

    def flatten(self, args: tuple, kwargs: dict) -> CallStructure:
        """Bind and flatten a call, as :func:`flatten_call` does.

        Raises:
            TypeError: the arguments do not fit the signature.
        """
        tensors: list[torch.Tensor] = []
        try:
            fingerprint = (
                tuple([_fingerprint(value, tensors) for value in args]),
                tuple(kwargs),
                tuple([_fingerprint(value, tensors) for value in kwargs.values()]),
            )
            layout = self._layouts.get(fingerprint)
        except Exception:  # _NoFastPath, or a structure whose hash or == raises (an unhashable node context)
            return flatten_call(self.signature, args, kwargs, self.strict)
        if layout is not None:
            return layout.call(args, kwargs, tensors)
        call = flatten_call(self.signature, args, kwargs, self.strict)
        found = _Layout.of(call, tensors) if self.capacity > 0 else None
        if found is not None:
            while len(self._layouts) >= self.capacity:
                try:
                    del self._layouts[next(iter(self._layouts))]  # the oldest (dicts keep insertion order)
                except (KeyError, RuntimeError, StopIteration):  # another thread changed it meanwhile
                    break
            self._layouts[fingerprint] = found
        return call
