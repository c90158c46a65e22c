"""The in-process life cycle: wrapper, recording, graph specs, tuned dispatch.

Import from the submodules (``aitune_triton.module.wrapper``, ``.spec``...). This file imports
nothing, so that backends can use ``aitune_triton.module.spec`` (the shared vocabulary of graph
specs) while ``wrapper`` uses backends.
"""
