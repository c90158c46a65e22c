"""Exceptions raised by aitune_triton.

Every error the library raises on purpose derives from :class:`AITuneTritonError`. Subclasses are
named for the cause and also derive from the builtin that callers expect (``ValueError`` for bad
input, ``RuntimeError`` for a wrong state or a failed external step), so ``except ValueError`` keeps
working for code written against ``torch.nn.Module``.
"""

from __future__ import annotations


class AITuneTritonError(Exception):
    """Base class of every error raised by aitune_triton."""


class InvalidArgumentError(AITuneTritonError, ValueError):
    """An argument has a value the function cannot use; the message names the argument, what was
    expected and what was given."""


class ArgumentTypeError(AITuneTritonError, TypeError):
    """An argument has a type the function cannot use."""


class InvalidNameError(InvalidArgumentError):
    """A module or model name cannot be used as a file and Triton model name."""


class UnknownBackendError(InvalidArgumentError):
    """No backend is registered under the given name."""


class DuplicateBackendError(AITuneTritonError, ValueError):
    """Another backend class is already registered under the same name."""


class DuplicateRegistrationError(AITuneTritonError, ValueError):
    """Another export target or deployment target is already registered under the same name."""


class InvalidStateDictError(InvalidArgumentError):
    """A dict passed as a tuned module description is not one (``Module.to_dict()`` output), or a
    stored graph spec is malformed (``GraphSpec.from_dict``: the message starts with
    ``Invalid dictionary format`` and names the missing key or wrong type)."""


class MalformedDictError(InvalidStateDictError):
    """A stored graph spec, tensor spec or other description part is malformed. The message is
    ``Invalid dictionary format for WHERE: PROBLEM. ...``; ``where`` and ``problem`` hold its parts,
    so that an enclosing description can name the field path (``graphs[0].graph``) itself."""

    def __init__(self, where: str, problem: str):
        super().__init__(
            f"Invalid dictionary format for {where}: {problem}. Pass the dict that to_dict() wrote (a checkpoint's "
            "manifest.json, say), unmodified."
        )
        self.where = where
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles with both parts (a worker process raises it)
        return type(self), (self.where, self.problem)


class StrategyCountError(AITuneTritonError, RuntimeError):
    """Fewer per-graph-spec strategies were given than graph specs were captured."""


class ModuleStateError(AITuneTritonError, RuntimeError):
    """A method was called in a state that does not allow it (e.g. ``to_dict`` before tuning)."""


class NoSamplesError(AITuneTritonError, ValueError):
    """Tuning or graph specs were asked for before any call was recorded."""


class AlreadyTunedError(AITuneTritonError, ValueError):
    """``tune()`` was called on a module that is already tuned."""


class GraphSpecMismatchError(AITuneTritonError, ValueError, RuntimeError):
    """A call to a tuned module (or a ``RemoteModule``) matches none of its graph specs: an input
    structure never recorded, or shapes outside the ranges its backends were built for.

    Both a ``ValueError`` (the call's input does not fit) and a ``RuntimeError`` (what NVIDIA
    AITune raises for it), so either ``except`` clause catches it."""


class IndexOutOfRangeError(AITuneTritonError, IndexError):
    """An index-valued input (token ids, say) holds a value outside what its indexing op accepts
    (the rows of an embedding table); eager PyTorch raises ``IndexError`` for it too."""


class RecordingError(AITuneTritonError, ValueError):
    """A recorded call cannot be used (e.g. the same inputs gave differently structured outputs), or
    it breaks the declared ``dynamic_shapes`` (rank, fixed size or range; that call is not run)."""


class UnknownOutputTypeError(RecordingError):
    """A stored output structure names a container type that is not known in this process and that
    no importable module defines."""


class BackendUnavailableError(AITuneTritonError, RuntimeError):
    """A backend cannot run on this machine (missing package or device)."""


class BackendBuildError(AITuneTritonError, RuntimeError):
    """A backend failed to build its artifact (export or compile step raised)."""


class OutputMismatchError(AITuneTritonError, RuntimeError):
    """A backend's outputs differ from eager outputs beyond the tolerance.

    Attributes:
        mismatches: One human-readable line per mismatching output leaf and sample.
    """

    def __init__(self, message: str, mismatches: list[str]):
        super().__init__(message + "\n  " + "\n  ".join(mismatches))
        self.mismatches = mismatches


class TuningError(AITuneTritonError, RuntimeError):
    """No candidate backend of a strategy passed for a graph spec."""


class CheckpointError(AITuneTritonError, ValueError):
    """A checkpoint is missing, incomplete, tampered with or of an unknown format."""


class ArtifactKindError(CheckpointError):
    """An artifact file is not of the kind its backend builds (a ``torch.save`` pickle in place of
    an AOTInductor package, say); found at save, load or export, without loading the file."""


class ExportError(AITuneTritonError, ValueError):
    """A module or checkpoint cannot be exported to a Triton model repository."""


class InvalidOptionError(InvalidArgumentError, ExportError):
    """A deployment option (``aitune_triton.triton.options``, ``TritonModelOptions``) has a value
    Triton cannot take; the message names the field, what was expected, what was given and what to do."""


class DeploymentError(AITuneTritonError, ValueError):
    """A model repository cannot be deployed: ``aitune-triton check`` refuses it, or the output
    directory cannot be written; nothing has been written."""


class TritonServerError(AITuneTritonError, RuntimeError):
    """The Triton server could not be found, started, or failed to load a model.

    Attributes:
        log_lines: The server's own error lines (``E...`` log lines), when there are any.
    """

    def __init__(self, message: str, log_lines: list[str] | None = None):
        self.log_lines = list(log_lines or [])
        if self.log_lines:
            message = message + "\nServer error lines:\n  " + "\n  ".join(self.log_lines)
        super().__init__(message)


class OutputStructureError(AITuneTritonError, RuntimeError):
    """Output tensors do not fit the output structure recorded for a graph spec."""


class RemoteInferenceError(AITuneTritonError, RuntimeError):
    """A request to a served model failed or its answer did not match the model's IO mapping."""


class RemoteTimeoutError(RemoteInferenceError, TimeoutError):
    """A served model did not answer within the RemoteModule's ``timeout_s`` (HTTP socket timeout,
    gRPC ``DEADLINE_EXCEEDED``)."""


class RemoteUnavailableError(RemoteInferenceError, ConnectionError):
    """The server cannot be reached: connection refused, nothing listening, gRPC ``UNAVAILABLE``."""


class RemoteConnectionClosedError(RemoteInferenceError, ConnectionError):
    """The server closed or reset the connection before answering (it stopped or crashed mid-request)."""
