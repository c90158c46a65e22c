"""Moving tensors between the Python backend and a runtime: numpy arrays, DLPack, bfloat16.

Tensors travel as numpy arrays (``as_numpy()``), except bfloat16 ones, which numpy cannot
represent: they move through DLPack into torch tensors and back (``to_dlpack`` /
``pb_utils.Tensor.from_dlpack``, Python backend docs "Interoperability and GPU Support"). torch is
imported only where a torch tensor is needed, so a model with numpy-only runtimes never loads it.
A *host value* here is a numpy array or, for bfloat16, a CPU torch tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["concatenate", "dtype_name", "host_value", "output_tensor", "split", "to_host", "to_torch"]


def dtype_name(value: Any) -> str:
    """Torch dtype name of a numpy array or torch tensor (``float32``, ``bfloat16``, ``bool``)."""
    return str(value.dtype).removeprefix("torch.")


def host_value(tensor: Any, dtype: str) -> Any:
    """The data of a Python-backend tensor: ``as_numpy()`` (no copy), or a CPU torch tensor
    through DLPack for ``dtype == "bfloat16"``.

    Args:
        tensor: A ``pb_utils.Tensor``.
        dtype: The torch dtype name the model declares for it.
    """
    if dtype == "bfloat16":
        import torch.utils.dlpack

        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu()
    return tensor.as_numpy()


def output_tensor(pb_utils: Any, name: str, value: Any) -> Any:
    """A ``pb_utils.Tensor`` named ``name`` from a numpy array, or through DLPack from a torch tensor (bfloat16)."""
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, value if value.flags.c_contiguous else np.ascontiguousarray(value))
    import torch.utils.dlpack

    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))


def to_torch(value: Any, device: Any) -> Any:
    """A torch runtime's input on ``device`` (a ``torch.device``): from a numpy array (shares its
    memory on CPU), or a torch tensor as it is; made contiguous."""
    import torch

    tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    return tensor.to(device).contiguous()


def to_host(output: Any) -> Any:
    """A torch runtime's output in CPU memory: numpy, except bfloat16 (stays a torch tensor)."""
    import torch

    output = output.detach().cpu()
    return output if output.dtype == torch.bfloat16 else output.numpy()


def concatenate(parts: Sequence[Any]) -> Any:
    """Host values joined along axis 0 (all numpy arrays, or all torch tensors)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(list(parts))


def split(value: Any, sizes: Sequence[int]) -> list[Any]:
    """``value`` cut along axis 0 into pieces of ``sizes`` (views, no copies)."""
    if isinstance(value, np.ndarray):
        return np.split(value, np.cumsum(sizes)[:-1])
    return list(value.split(list(sizes)))
