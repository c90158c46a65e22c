"""What ``aitune-triton check`` reports: a :class:`CheckReport` of one :class:`ModelCheck` per model,
each a list of :class:`Finding` (``OK``, ``WARN``, ``ERROR``), and its tables for the console.
The checks themselves are :func:`aitune_triton.triton.check.check_repository`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from aitune_triton.triton.manifest import ModelKind

__all__ = ["OK", "WARN", "ERROR", "CheckReport", "Finding", "ModelCheck", "report_tables"]

OK, WARN, ERROR = "OK", "WARN", "ERROR"
_RANK = {OK: 0, WARN: 1, ERROR: 2}


@dataclass(frozen=True)
class Finding:
    """One result of a check.

    Attributes:
        severity: ``"OK"``, ``"WARN"`` or ``"ERROR"``.
        message: What was found and what to do.
        version: The version directory it is about, or None for the model as a whole.
    """

    severity: str
    message: str
    version: int | None = None


@dataclass
class ModelCheck:
    """The findings of one model directory.

    Attributes:
        name: Model (directory) name.
        kind: What the manifests say it is (:class:`~aitune_triton.triton.manifest.ModelKind`, a
            ``str``: ``"graph"``, ``"entry"``...); None: not an aitune_triton model.
        findings: Everything found, in check order.
    """

    name: str
    kind: ModelKind | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst severity of the findings (``"OK"`` when there are none)."""
        return max((f.severity for f in self.findings), key=_RANK.__getitem__, default=OK)

    def add(self, severity: str, message: str, version: int | None = None) -> None:
        """Record one finding (``severity``: OK, WARNING or ERROR) about ``version`` (None: the model)."""
        self.findings.append(Finding(severity, message, version))


@dataclass
class CheckReport:
    """What :func:`check_repository` found.

    Attributes:
        repository: The checked repository (absolute).
        models: One :class:`ModelCheck` per model directory, sorted by name.
        loaded: Whether the models were loaded by a server (``load=True``).
    """

    repository: Path
    models: list[ModelCheck]
    loaded: bool = False

    @property
    def ok(self) -> bool:
        """True when no finding is an ERROR."""
        return all(model.status != ERROR for model in self.models)

    def findings(self, severity: str | None = None) -> Iterator[tuple[str, Finding]]:
        """``(model name, finding)`` pairs, of one severity when given."""
        for model in self.models:
            for finding in model.findings:
                if severity is None or finding.severity == severity:
                    yield model.name, finding

    def model(self, name: str) -> ModelCheck:
        """The :class:`ModelCheck` of model ``name``.

        Raises:
            KeyError: the repository has no such model directory.
        """
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"{name}: no such model in {self.repository}; models: {[m.name for m in self.models]}")


_STYLE = {OK: "green", WARN: "yellow", ERROR: "bold red"}


def report_tables(report: CheckReport) -> list[Any]:
    """One ``rich.table.Table`` per model: status, version and message of each finding."""
    from rich.table import Table

    tables = []
    for model in report.models:
        table = Table(title=f"{model.name} ({model.kind or 'not an aitune_triton model'}): {model.status}",
                      title_justify="left")
        table.add_column("status")
        table.add_column("version", justify="right")
        table.add_column("message")
        for finding in model.findings:
            table.add_row(f"[{_STYLE[finding.severity]}]{finding.severity}[/]",
                          "-" if finding.version is None else str(finding.version), finding.message)
        tables.append(table)
    return tables
