"""What ``benchmarks/tuning.py`` reports: per variant and shape the ratios to eager, the geometric
mean over the shapes, the per-sentence cosines, the issue's goals as checks, tables and a chart."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import statistics
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

__all__ = [
    "DEFAULT_GEOMEAN_GOAL",
    "DEFAULT_SHAPE_GOAL",
    "LOWER_PRECISION_COSINE_GOAL",
    "LOWER_PRECISION_GOAL",
    "Result",
    "check_goals",
    "over_shapes",
    "print_goals",
    "print_summary",
    "print_table",
    "proxy_overhead",
    "versions",
    "write_png",
]

#: Libraries whose versions go into the JSON report.
LIBRARIES = ("torch", "onnxruntime", "onnx", "onnxscript", "openvino", "nncf", "transformers", "numpy", "aitune-triton", "nvidia-pytriton")
#: Issue 18's goals: the default strategy (fp32) at most this geometric mean of its ratios over the shapes...
DEFAULT_GEOMEAN_GOAL = 0.40
#: ... and no shape above this ratio;
DEFAULT_SHAPE_GOAL = 0.95
#: the best lower precision at 8 x 128 at most this ratio, with every per-sentence cosine at least
#: LOWER_PRECISION_COSINE_GOAL on the demo's real sentences.
LOWER_PRECISION_GOAL = 0.20
LOWER_PRECISION_COSINE_GOAL = 0.995
LOWER_PRECISION_SHAPE = "8x128"
#: The shapes the default strategy's goal is judged over.
GOAL_SHAPES = ("1x16", "8x128", "32x101")


@dataclass
class Result:
    """What one variant gave at one shape."""

    status: str = "ok"
    note: str = ""
    tune_s: float | None = None
    chosen: str | None = None
    latency_ms: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    call: Callable[..., Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-compatible numbers (no callables)."""
        data: dict[str, Any] = {
            "status": self.status,
            "note": self.note,
            "tune_s": self.tune_s,
            "chosen": self.chosen,
            "latency_ms_per_round": self.latency_ms,
            "ratio_vs_eager_per_round": self.ratio,
        }
        if self.ratio:
            data["ratio_vs_eager"] = {"min": min(self.ratio), "median": statistics.median(self.ratio), "max": max(self.ratio)}
        if self.cosine:
            data["cosine_vs_eager"] = {"per_sentence": self.cosine, "min": min(self.cosine), "mean": statistics.fmean(self.cosine)}
        return data


def over_shapes(shapes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant, from the report's ``shapes``: its median ratio per shape, the largest one, and
    their geometric mean (None unless the variant ran at every shape), plus its lowest cosine."""
    names = list(dict.fromkeys(name for shape in shapes.values() for name in shape["variants"]))
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        medians = {tag: shape["variants"].get(name, {}).get("ratio_vs_eager", {}).get("median") for tag, shape in shapes.items()}
        complete = all(value is not None for value in medians.values())
        cosines = [shape["variants"][name]["cosine_vs_eager"]["min"] for shape in shapes.values()
                   if "cosine_vs_eager" in shape["variants"].get(name, {})]  # fmt: skip
        found[name] = {
            "median_ratio_per_shape": medians,
            "max_shape_ratio": max(medians.values()) if complete else None,
            "geomean_ratio": math.exp(statistics.fmean(math.log(v) for v in medians.values())) if complete else None,
            "cosine_min": min(cosines) if cosines else None,
        }
    return found


def check_goals(report: dict[str, Any], lower_precision: list[str]) -> list[dict[str, Any]]:
    """Issue 18's benchmark goals against ``report`` (``met`` None: not measured in this run)."""
    shapes, totals = report["shapes"], report["over_shapes"]
    default = totals.get("default")
    goal: dict[str, Any] = {
        "goal": f"default strategy (fp32): geometric mean over the shapes <= {DEFAULT_GEOMEAN_GOAL}x eager, no shape above {DEFAULT_SHAPE_GOAL}x",
        "met": None,
    }
    if default is None or default["geomean_ratio"] is None:
        goal["detail"] = "the 'default' variant did not run at every shape"
    else:
        per_shape = ", ".join(f"{tag} {ratio:.2f}x" for tag, ratio in default["median_ratio_per_shape"].items())
        goal["detail"] = f"geometric mean {default['geomean_ratio']:.2f}x ({per_shape}; medians over the rounds)"
        if set(shapes) == set(GOAL_SHAPES):
            goal["met"] = default["geomean_ratio"] <= DEFAULT_GEOMEAN_GOAL and default["max_shape_ratio"] <= DEFAULT_SHAPE_GOAL
        else:
            goal["detail"] += f"; the goal is over {', '.join(GOAL_SHAPES)}, not the shapes of this run"
    goals = [goal]
    goal = {
        "goal": f"best lower precision at {LOWER_PRECISION_SHAPE} <= {LOWER_PRECISION_GOAL}x eager with every per-sentence cosine "
        f">= {LOWER_PRECISION_COSINE_GOAL}",
        "met": None,
    }
    measured = shapes.get(LOWER_PRECISION_SHAPE, {}).get("variants", {})
    ran = {name: measured[name] for name in lower_precision if measured.get(name, {}).get("ratio_vs_eager")}
    if LOWER_PRECISION_SHAPE not in shapes or not ran:
        goal["detail"] = f"no lower-precision variant ran at {LOWER_PRECISION_SHAPE}"
    else:
        accurate = {name: data for name, data in ran.items() if data["cosine_vs_eager"]["min"] >= LOWER_PRECISION_COSINE_GOAL}
        scores = ", ".join(
            f"{name} {data['ratio_vs_eager']['median']:.2f}x cos min {data['cosine_vs_eager']['min']:.4f}" for name, data in ran.items()
        )
        if accurate:
            best = min(accurate, key=lambda name: accurate[name]["ratio_vs_eager"]["median"])
            goal["met"] = accurate[best]["ratio_vs_eager"]["median"] <= LOWER_PRECISION_GOAL
            goal["detail"] = f"best accurate: {best}; all: {scores}"
        else:
            goal["met"], goal["detail"] = False, f"none reached cosine {LOWER_PRECISION_COSINE_GOAL}: {scores}"
    goals.append(goal)
    return goals


def print_goals(console: Console, goals: list[dict[str, Any]]) -> None:
    for goal in goals:
        verdict = {True: "[green]met[/green]", False: "[red]NOT met[/red]", None: "[yellow]not measured[/yellow]"}[goal["met"]]
        console.print(f"Goal: {goal['goal']}: {verdict}: {goal['detail']}")


def print_table(console: Console, shape: str, results: dict[str, Result], calls: int, rounds: int) -> None:
    table = Table(title=f"MiniLM-L6 {shape} tokens: latency ratio vs eager ({rounds} round(s) x {calls} calls; < 1 is faster)")
    for column in ("variant", "backend", "tune s", "eager-ratio min", "median", "max", "median ms", "cosine min", "cosine mean"):
        table.add_column(column, justify="left" if column in ("variant", "backend") else "right")
    for name, result in results.items():
        if result.status != "ok":
            table.add_row(name, f"[red]{result.status}[/red]: {result.note[:60]}", *[""] * 7)
            continue
        cosine = ("", "") if not result.cosine else (f"{min(result.cosine):.4f}", f"{statistics.fmean(result.cosine):.4f}")
        table.add_row(
            name,
            result.chosen or result.note,
            "" if result.tune_s is None else f"{result.tune_s:.0f}",
            f"{min(result.ratio):.2f}",
            f"{statistics.median(result.ratio):.2f}",
            f"{max(result.ratio):.2f}",
            f"{statistics.median(result.latency_ms):.1f}",
            *cosine,
        )
    console.print(table)


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """One row per variant: its median ratio at each shape, their geometric mean, its lowest cosine."""
    shapes = list(report["shapes"])
    table = Table(title="MiniLM-L6: median ratio vs eager per shape, and their geometric mean (< 1 is faster)")
    for column in ("variant", *shapes, "geomean", "max shape", "cosine min"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, data in report["over_shapes"].items():
        cells = [f"{value:.2f}" if value is not None else "-" for value in data["median_ratio_per_shape"].values()]
        rest = [data["geomean_ratio"], data["max_shape_ratio"]]
        cosine = "" if data["cosine_min"] is None else f"{data['cosine_min']:.4f}"
        table.add_row(name, *cells, *(f"{value:.2f}" if value is not None else "-" for value in rest), cosine)
    console.print(table)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for library in LIBRARIES:
        try:
            found[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            found[library] = None
    found["python"] = platform.python_version()
    return found


def proxy_overhead(console: Console, here: Path) -> Any:
    """``benchmarks/proxy_overhead.py: measure_proxy_overhead()``'s result, or why it is missing."""
    if not (here / "proxy_overhead.py").exists():
        return {"skipped": "benchmarks/proxy_overhead.py does not exist"}
    try:
        from proxy_overhead import measure_proxy_overhead

        result = measure_proxy_overhead()
    except Exception as error:  # another benchmark's failure is reported, not fatal here
        console.print(f"[red]measure_proxy_overhead() failed[/red]: {type(error).__name__}: {error}")
        return {"failed": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    console.print(f"Proxy overhead (benchmarks/proxy_overhead.py): {result}")
    return json.loads(json.dumps(result, default=lambda value: getattr(value, "__dict__", str(value))))


def write_png(path: Path, report: dict[str, Any]) -> None:
    """Bar chart of median ratios vs eager, one group per variant, one bar per shape, min/max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(report["shapes"])
    variants = [v for v in dict.fromkeys(name for shape in shapes for name in report["shapes"][shape]["variants"])]
    width = 0.8 / max(len(shapes), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(variants) + 2), 4.5))
    for index, shape in enumerate(shapes):
        measured = report["shapes"][shape]["variants"]
        xs, medians, low, high = [], [], [], []
        for position, name in enumerate(variants):
            ratio = measured.get(name, {}).get("ratio_vs_eager")
            if ratio:
                xs.append(position + (index - (len(shapes) - 1) / 2) * width)
                medians.append(ratio["median"])
                low.append(ratio["median"] - ratio["min"])
                high.append(ratio["max"] - ratio["median"])
        axes.bar(xs, medians, width, yerr=[low, high], capsize=3, label=f"{shape} tokens")
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    labels = []
    for name in variants:  # name the backend a strategy chose, when it chose one for every shape
        chosen = {report["shapes"][shape]["variants"].get(name, {}).get("chosen") for shape in shapes}
        labels.append(f"{name} ({chosen.pop()})" if name == "default" and len(chosen) == 1 and None not in chosen else name)
    axes.set_xticks(range(len(variants)), labels, rotation=30, ha="right")
    axes.set_ylabel("latency / eager latency (median, min..max over rounds)")
    axes.set_title(f"MiniLM-L6 on {report['device']}: tuned variants vs eager")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
