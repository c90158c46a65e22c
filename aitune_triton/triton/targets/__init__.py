"""Export targets: what serves each graph model of an export, registered by name.

* ``python`` (:mod:`.python`): a generated Python-backend ``model.py`` (the default);
* ``native`` (:mod:`.native`): one of Triton's own backends where the backend declares one.

To add a target: a new module here with an :class:`~.base.ExportTargetBase` subclass, and one
:func:`register_export_target` line below.
"""

from aitune_triton.triton.targets.base import ExportTargetBase, export_target, export_target_names, register_export_target
from aitune_triton.triton.targets.native import NativeExportTarget
from aitune_triton.triton.targets.python import PythonTarget

register_export_target(PythonTarget())
register_export_target(NativeExportTarget())

__all__ = ["ExportTargetBase", "NativeExportTarget", "PythonTarget", "export_target", "export_target_names",
           "register_export_target"]
