"""The in-process life cycle: wrapper, recording, tuned dispatch.

Import from the submodules (``aitune_triton.module.wrapper``, ``.recording``...). Graph specs, the
vocabulary every layer shares, live one layer down in :mod:`aitune_triton.spec`.
"""
