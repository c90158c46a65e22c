"""The parts of ``benchmarks/serving.py`` around the measurements: min/median/max, perf_analyzer
(where its binary is found) and the latency-throughput plot."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any, Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of one number over rounds."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def find_perf_analyzer() -> tuple[str | None, str]:
    """(path, "") of perf_analyzer on PATH or in the tritonclient package's ``bin/``, or (None, why not)."""
    found = shutil.which("perf_analyzer")
    if found:
        return found, ""
    try:
        import tritonclient
    except ImportError:
        return None, "perf_analyzer is not on PATH and tritonclient is not installed"
    packaged = Path(tritonclient.__file__).parent / "bin" / "perf_analyzer"
    if packaged.is_file():
        return str(packaged), ""
    from importlib.metadata import version

    return None, (f"perf_analyzer is not on PATH nor in {packaged.parent} (tritonclient {version('tritonclient')}; "
                  "tritonclient==2.51.0 ships it, and it needs libb64-0d and nvidia-cuda-runtime-cu12)")


def perf_analyzer(url: str, model: str, graph_models: Sequence[str], kinds: dict[str, list], concurrency: Sequence[int],
                  seconds: float, workdir: Path) -> dict[str, Any]:
    """perf_analyzer (gRPC, batch 1) on each kind of traffic at each concurrency, with the same
    requests as input data (each with its own shape). Returns per kind a list of
    ``{clients, requests_per_s, p50_ms, p99_ms}``, or ``{"status": "not run: <reason>"}``, or
    ``{"status": "failed: <its output>"}`` (it is never required)."""
    binary, why = find_perf_analyzer()
    if binary is None:
        return {"status": f"not run: {why}"}
    extra = [] if list(graph_models) == [model] else [f"--bls-composing-models={','.join(graph_models)}"]
    report: dict[str, Any] = {"status": "ok", "binary": binary}
    for kind, requests in kinds.items():
        data = workdir / f"perf_analyzer_{kind}.json"
        data.write_text(json.dumps({"data": [
            {name: {"content": tensor[0].tolist(), "shape": list(tensor.shape[1:])} for name, tensor in request.items()}
            for request in requests
        ]}))
        report[kind] = []
        for clients in concurrency:
            table = workdir / f"perf_analyzer_{kind}_{clients}.csv"
            command = [binary, "-m", model, "-u", url, "-i", "grpc", "-b", "1", "--input-data", str(data),
                       "--concurrency-range", f"{clients}:{clients}", "--measurement-interval", str(int(seconds * 1000)),
                       "-f", str(table), *extra]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=max(120.0, 20 * seconds))
            except (OSError, subprocess.TimeoutExpired) as error:
                return {"status": f"failed: {error}", "command": command}
            if done.returncode != 0 or not table.is_file():
                return {"status": f"failed: exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}", "command": command}
            row = next(csv.DictReader(table.read_text().splitlines()))
            report[kind].append({"clients": clients, "requests_per_s": float(row["Inferences/Second"]),
                                 "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3})
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency (p50 solid, p99 dashed, ms, log scale) against throughput (sentences/s) of the served
    sweep, each point labelled with its concurrency, with the in-process baselines as vertical lines."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for (kind, points), color in zip(report["sweep"].items(), ("tab:blue", "tab:orange")):
        rate = [p["sentences_per_s"] for p in points]
        axes.plot(rate, [p["p50_ms"] for p in points], "o-", color=color, label=f"served, {kind}: p50")
        axes.plot(rate, [p["p99_ms"] for p in points], "x--", color=color, label=f"served, {kind}: p99")
        for point in points:
            axes.annotate(f"c{point['clients']}", (point["sentences_per_s"], point["p50_ms"]), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
    pa = report.get("perf_analyzer", {})
    for kind in ("variable", "fixed"):
        if pa.get("status") == "ok" and pa.get(kind):
            axes.plot([p["requests_per_s"] for p in pa[kind]], [p["p50_ms"] for p in pa[kind]], "s:", label=f"perf_analyzer, {kind}: p50")
    baselines = (("in_process_b1_variable", "in-process b1, variable", "tab:green"),
                 ("in_process_ceiling_variable", "in-process ceiling (sorted b8), variable", "tab:red"),
                 ("in_process_b1_fixed", "in-process b1, fixed", "tab:gray"))
    for name, label, color in baselines:
        value = statistics.median(r[name]["value"] for r in report["rounds_measured"])
        axes.axvline(value, color=color, linestyle=":", label=f"{label}: {value:.0f}/s")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("sentences / s")
    axes.set_ylabel("client-observed latency, ms")
    axes.set_title(f"MiniLM-L6 served (gRPC, closed loop) vs in process, {report['cpu_count']} cores")
    axes.legend(fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
