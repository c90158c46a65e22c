"""The graph model: what a generated graph ``model.py`` runs inside Triton's Python backend.

One graph spec's artifact, run by its backend's runtime (:mod:`.runtimes`). Inputs and outputs
are described in ``io.json`` next to ``model.py``. Each request is read, its dtypes checked and
then checked against the artifact's input contract (shape ranges, tied and fixed axes, the value
ranges of index inputs such as token ids) before it runs. :meth:`GraphModel.run_accepted` runs
the accepted requests of one ``execute()`` call: where tuning proved padding changes no result
(``io.json``'s ``padding``), requests of different lengths are padded to the longest and run as
one batch (:mod:`.padding`), each request getting its own slice back; otherwise requests with
equal per-sample shapes are concatenated along the batch axis and run as one batch. Every problem with one request (a missing
input, a dtype or shape the artifact does not take, a bad token id) answers that request with
INVALID_ARG; a runtime failure answers the requests of its batch with INTERNAL; ``execute()``
itself never raises.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator, Sequence

import numpy as np

from .contract import InputContract
from .padding import PaddingLayout, run_padded
from .runtimes import runtime_module
from .shipped import verify_file
from .tensors import concatenate, dtype_name, host_value, output_tensor, split

__all__ = ["STAGE_LOG_ENV", "THREADS_PARAMETER", "Accepted", "GraphModel", "runtime_options"]

#: Config parameter with the intra-op threads of each instance (set by the exporter's options).
THREADS_PARAMETER = "aitune_triton.intra_op_threads"
#: Environment variable naming a file to which every ``execute()`` call appends one JSON line of
#: its stage times in ms (``read``, ``run`` (planning included), ``respond``, ``total``); unset (the
#: default), nothing is timed. The server's stub processes inherit it from the server;
#: ``benchmarks/served_breakdown.py`` sets it.
STAGE_LOG_ENV = "AITUNE_TRITON_STAGE_LOG"

#: An accepted request: its index in the ``execute()`` call and its input host values (artifact order).
Accepted = tuple[int, list[Any]]
#: What one request's run gave: its output host values, the message of why padding refused it
#: (answered INVALID_ARG), or the exception its run raised (answered INTERNAL).
Outcome = tuple[int, "list[Any] | str | Exception"]


def runtime_options(stored: dict[str, Any], model_config: dict[str, Any]) -> dict[str, Any]:
    """The backend's stored options with the configuration's intra-op threads applied.

    The threads go to ONNX Runtime's session options (``intra_op_num_threads``) and to torch
    (``torch.set_num_threads``) when torch is imported, before the artifact is loaded.

    Args:
        stored: The backend's stored options.
        model_config: The parsed model configuration (``json.loads(args["model_config"])``).
    """
    options = dict(stored)
    threads = model_config.get("parameters", {}).get(THREADS_PARAMETER, {}).get("string_value")
    if threads:
        options["intra_op_num_threads"] = int(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))
    return options


class GraphModel:
    """The ``TritonPythonModel`` logic of a graph model.

    Args:
        pb_utils: The Python backend's ``triton_python_backend_utils`` module (or a stand-in).
        args: The ``initialize()`` arguments Triton passes (``model_repository``,
            ``model_version``, ``model_name``, ``model_config``, ``model_instance_kind``,
            ``model_instance_device_id``).
        runtime: The runtime module name (:data:`.runtimes.RUNTIMES`).
        artifact: The artifact's file name in the version directory.
        stored_options: The backend's stored options.

    Raises:
        ShippedFileError: the artifact's SHA-256 differs from ``manifest.json``.
        Exception: whatever the runtime raises loading the artifact (Triton then fails the load).
    """

    def __init__(self, pb_utils: Any, args: dict[str, str], runtime: str, artifact: str, stored_options: dict[str, Any]) -> None:
        self.pb_utils = pb_utils
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "io.json")) as handle:
            io = json.load(handle)
        self.model_name = args["model_name"]
        self.inputs = [(tensor["name"], tensor["dtype"]) for tensor in io["inputs"]]
        # Per input: the numpy dtype its arrays must have (None: bfloat16, which arrives as torch).
        self._numpy_dtypes = [None if dtype == "bfloat16" else np.dtype(dtype) for _, dtype in self.inputs]
        self.contract = InputContract.from_io(io)
        self.output_names = [tensor["name"] for tensor in io["outputs"]]
        self.batching = io["max_batch_size"] > 0
        self.max_batch_size = int(io["max_batch_size"])
        # Set only where tuning proved padding changes no result (io.json's "padding"): requests of
        # different lengths are then padded into one batch instead of grouped by shape.
        self.padding = PaddingLayout.from_dict(io["padding"]) if self.batching and io.get("padding") else None
        # A 0-d tensor of a model that does not batch travels as shape [1] (Triton needs a dim).
        self.scalar_inputs = [not self.batching and not tensor["dims"] for tensor in io["inputs"]]
        self.scalar_outputs = [not self.batching and not tensor["dims"] for tensor in io["outputs"]]
        self._any_scalar_input, self._any_scalar_output = any(self.scalar_inputs), any(self.scalar_outputs)
        path = verify_file(version_dir, artifact)
        # The runtime module first: it imports torch, which runtime_options then gives the threads.
        runtime_class = runtime_module(runtime).Runtime
        options = runtime_options(stored_options, json.loads(args["model_config"]))
        self.intra_op_threads = options.get("intra_op_num_threads")
        gpu = args["model_instance_kind"] == "GPU"
        self.runtime = runtime_class(path, gpu, int(args["model_instance_device_id"]), options)
        self.stage_log = os.environ.get(STAGE_LOG_ENV) or None

    def run(self, values: Sequence[Any]) -> list[Any]:
        """Run the artifact on input host values (artifact input order); return output host values."""
        return self.runtime.run(values)

    def read(self, request: Any) -> list[Any]:
        """The request's inputs as host values (artifact order), scalars reshaped to 0-d.

        Raises:
            ValueError: an input is missing, has another dtype than the artifact's, or breaks
                its input contract (the message names it).
        """
        values = []
        get_input = self.pb_utils.get_input_tensor_by_name
        for name, dtype in self.inputs:
            tensor = get_input(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            values.append(host_value(tensor, dtype))
        if any(value.dtype != expected if expected is not None else dtype_name(value) != "bfloat16"
               for value, expected in zip(values, self._numpy_dtypes)):
            wrong = [f"input {name!r} has dtype {dtype_name(value)}, expected {dtype}"
                     for (name, dtype), value in zip(self.inputs, values) if dtype_name(value) != dtype]
            raise ValueError("; ".join(wrong))
        if self._any_scalar_input:
            values = [value.reshape(()) if scalar else value for value, scalar in zip(values, self.scalar_inputs)]
        # The compiled artifact does not check its inputs: a wrong size or index would read out of
        # bounds or abort this process.
        problems = self.contract.violations(values)
        if problems:
            raise ValueError("; ".join(problems))
        return values

    def plan_batches(self, accepted: list[Accepted]) -> list[list[Accepted]]:
        """Group accepted requests into the batches that run: with batching, the requests whose
        per-sample shapes are equal (in arrival order), otherwise one batch per request."""
        if not self.batching or len(accepted) == 1:
            return [[member] for member in accepted]
        groups: dict[tuple[tuple[int, ...], ...], list[Accepted]] = {}
        for index, values in accepted:
            groups.setdefault(tuple(tuple(value.shape[1:]) for value in values), []).append((index, values))
        return list(groups.values())

    def run_batch(self, members: list[Accepted]) -> Iterator[tuple[int, list[Any]]]:
        """Run one batch (concatenated along axis 0 when it has several requests); yield
        ``(request index, output host values)``."""
        if len(members) == 1:
            index, values = members[0]
            yield index, self.run(values)
            return
        batched = [concatenate([values[position] for _, values in members]) for position in range(len(self.inputs))]
        sizes = [int(values[0].shape[0]) for _, values in members]
        pieces = [split(output, sizes) for output in self.run(batched)]
        for member, (index, _) in enumerate(members):
            yield index, [parts[member] for parts in pieces]

    def run_accepted(self, accepted: list[Accepted]) -> list[Outcome]:
        """Run the accepted requests of one ``execute()`` call; one outcome per request.

        With a padding layout, :func:`.padding.run_padded` pads requests of different lengths into
        runs of at most ``max_batch_size`` rows, answers a request it refuses (a mask that is not
        0/1, data at its pad positions) with its message and reruns alone each request of a run
        that failed, so one bad request never fails the others. Otherwise requests of equal
        per-sample shapes run together (:meth:`plan_batches`); a failed batch fails its requests.
        """
        if self.padding is not None:
            results = run_padded(self.padding, [values for _, values in accepted], self.run, self.max_batch_size)
            return [(index, result) for (index, _), result in zip(accepted, results)]
        outcomes: list[Outcome] = []
        for members in self.plan_batches(accepted):
            try:
                outcomes.extend(self.run_batch(members))
            except Exception as error:
                outcomes.extend((index, error) for index, _ in members)
        return outcomes

    def error(self, message: str, code: Any = None) -> Any:
        """An error response naming this model; ``code`` a ``TritonError`` code (default INTERNAL)."""
        error = self.pb_utils.TritonError
        return self.pb_utils.InferenceResponse(error=error(f"{self.model_name}: {message}", error.INTERNAL if code is None else code))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; never raises."""
        if self.stage_log is None:
            return self._execute(requests, None)
        marks = [("start", time.perf_counter_ns())]
        responses = self._execute(requests, marks)
        times = {name: (at - marks[index][1]) / 1e6 for index, (name, at) in enumerate(marks[1:])}
        times["total"] = (marks[-1][1] - marks[0][1]) / 1e6
        try:
            with open(self.stage_log, "a") as handle:
                handle.write(json.dumps({**times, "requests": len(requests)}) + "\n")
        except OSError:
            self.stage_log = None  # timing is for benchmarks: never fail a request over it
        return responses

    def _execute(self, requests: list[Any], marks: list[tuple[str, int]] | None) -> list[Any]:
        """:meth:`execute`, appending ``(stage, perf_counter_ns)`` to ``marks`` when given."""
        responses: list[Any] = [None] * len(requests)
        accepted: list[Accepted] = []
        for index, request in enumerate(requests):
            try:
                accepted.append((index, self.read(request)))
            except ValueError as problem:
                responses[index] = self.error(str(problem), self.pb_utils.TritonError.INVALID_ARG)
            except Exception as error:  # a request Triton let through that this model cannot read
                responses[index] = self.error(f"{type(error).__name__}: {error}", self.pb_utils.TritonError.INVALID_ARG)
        if marks is not None:
            marks.append(("read", time.perf_counter_ns()))
        try:
            outcomes = self.run_accepted(accepted)
        except Exception as error:  # planning itself failed: every accepted request gets the error
            outcomes = [(index, error) for index, _ in accepted]
        if marks is not None:
            marks.append(("run", time.perf_counter_ns()))
        for index, outcome in outcomes:
            responses[index] = self.respond(outcome)
        if marks is not None:
            marks.append(("respond", time.perf_counter_ns()))
        return responses

    def respond(self, outcome: "list[Any] | str | Exception") -> Any:
        """The response for one request's outcome (see :data:`Outcome`); never raises."""
        if isinstance(outcome, str):
            return self.error(outcome, self.pb_utils.TritonError.INVALID_ARG)
        if isinstance(outcome, Exception):
            return self.error(f"{type(outcome).__name__}: {outcome}")
        try:
            if self._any_scalar_output:
                outcome = [value.reshape((1,)) if scalar else value for value, scalar in zip(outcome, self.scalar_outputs)]
            tensors = [output_tensor(self.pb_utils, name, value) for name, value in zip(self.output_names, outcome)]
            return self.pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as error:
            return self.error(f"{type(error).__name__}: {error}")

    def finalize(self) -> None:
        """Release the runtime."""
        self.runtime.close()
