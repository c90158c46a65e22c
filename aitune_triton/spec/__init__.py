"""Graph specs: the structure of a module's calls, independent of tensor sizes.

A call is bound to the module's forward signature (:mod:`.signature`), giving a dict ``{parameter
name: value}`` of the arguments that were actually passed. That dict is flattened with
``torch.utils._pytree`` (:mod:`.calls`, :mod:`.flat_tree`); its tree structure plus, per leaf, the
tensor dtype and rank (or the constant value of a non-tensor leaf) form the call's *key*. Calls with
the same key share one :class:`GraphSpec` (:mod:`.graph`); calls that differ only in tensor sizes do
too. A module's outputs are flattened and rebuilt by :mod:`.outputs`; their structure is stored as
JSON, naming its container types, by :mod:`.pytree_json`.

The modules, one per job:

- :mod:`.pytree_json`: dtype names, pytree structures as JSON, import of the types they name.
- :mod:`.signature`: the forward signature and the binding of a call to it.
- :mod:`.flat_tree`: a flattened pytree with dotted leaf paths.
- :mod:`.calls`: call flattening, its key, and :class:`CallLayouts` for repeated calls.
- :mod:`.outputs`: output containers (flatten, rebuild, what cannot be stored).
- :mod:`.dim_range`: :class:`DimRange`, the ``(min, opt, max)`` sizes of one dynamic dimension.
- :mod:`.graph`: :class:`TensorSpec`, :class:`GraphSpec` and their validators.
"""

from aitune_triton.spec.calls import CallLayouts, CallStructure, StoredCall, flatten_call
from aitune_triton.spec.dim_range import DimRange
from aitune_triton.spec.flat_tree import FlatTree
from aitune_triton.spec.graph import GraphSpec, OutputStructure, TensorSpec, axis_range, check_graph_dict, stored_dims
from aitune_triton.spec.outputs import (
    flat_output,
    flatten_output,
    holds_tensor,
    output_leaf_paths,
    output_leaf_problems,
    output_leaves,
    rebuild_output,
    same_value,
)
from aitune_triton.spec.pytree_json import dtype_from_name, dtype_name, import_serialized_type, keypath_name, treespec_from_json, treespec_to_json
from aitune_triton.spec.signature import ForwardSignature, ParameterSpec, call_signature

__all__ = [
    "CallLayouts",
    "CallStructure",
    "DimRange",
    "ForwardSignature",
    "GraphSpec",
    "OutputStructure",
    "ParameterSpec",
    "StoredCall",
    "TensorSpec",
    "axis_range",
    "check_graph_dict",
    "dtype_from_name",
    "dtype_name",
    "flatten_call",
    "flatten_output",
    "flat_output",
    "output_leaf_problems",
    "rebuild_output",
    "output_leaves",
    "output_leaf_paths",
    "same_value",
    "holds_tensor",
    "import_serialized_type",
    "treespec_from_json",
    "treespec_to_json",
]
