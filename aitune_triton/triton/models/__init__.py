"""The kinds of Triton model an export writes, one module each (:class:`~aitune_triton.triton.manifest.ModelKind`).

* :mod:`.graph`: a graph model, running one graph spec's artifact in a generated Python-backend
  ``model.py`` (a model of one of Triton's own backends is planned by the ``native`` export target,
  :mod:`aitune_triton.triton.targets`);
* :mod:`.entry`: the module's entry model: a BLS router in front of its graph models, or its one
  graph model exported without a router;
* :mod:`.step`: a pre/post-processing step model (:mod:`aitune_triton.triton.steps`);
* :mod:`.ensemble`: the Triton ensemble wiring the steps around an entry model.

Each module returns :class:`~aitune_triton.triton.models.planned.PlannedModel` objects (every file
and configuration in memory). To add a kind of model: add a ``ModelKind`` member, a module here,
and call it from :func:`aitune_triton.triton.export_plan.plan_export`.
"""
