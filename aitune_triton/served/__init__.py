"""Everything that runs inside Triton's Python backend for an exported model.

The exporter copies this package's files beside each generated ``model.py`` (into
``<version>/aitune_triton_served/``, listed with their SHA-256 in ``manifest.json``), and the
short ``model.py`` verifies them and imports the copy under a private module name
(:func:`~aitune_triton.served.shipped.load_package`), so a served model needs no aitune_triton
install and never picks up another installed version. Hence the rules for this package: relative
imports only, nothing from ``aitune_triton`` outside it, numpy and the standard library at import
time; torch and onnxruntime only in the runtime modules or inside functions.

Modules:
    contract: the input contract of an artifact and the one check of a call against it.
    tensors: numpy / DLPack / bfloat16 helpers between Python-backend tensors and runtimes.
    shipped: the SHA-256 check of shipped files and the loader of this package's copy.
    graph_model: the graph model (runs one graph spec's artifact).
    routes: the routes JSON of an entry model (:class:`~aitune_triton.served.routes.Routes`),
        its one reader and writer, used by the exporter and the clients too.
    router: the entry model routing each request to its graph model with BLS.
    step_runtime, step_model: a pre/post-processing step around the user's function.
    runtimes: one module per backend (``onnxruntime``, ``aoti``, ``inductor``, ``openvino``) defining ``Runtime``.
"""

#: Directory of the package's copy in a model version directory.
PACKAGE_DIR = "aitune_triton_served"
