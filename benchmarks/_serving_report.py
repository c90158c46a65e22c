"""The parts of ``benchmarks/serving.py`` around the measurements: min/median/max, perf_analyzer
(where its binary is found) and the latency-throughput plot."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of one number over rounds."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def find_perf_analyzer() -> tuple[str | None, str]:
    """(path, "") of perf_analyzer on PATH or in this environment's ``bin/`` (where the tritonclient
    wheel puts it), or (None, why not)."""
    found = shutil.which("perf_analyzer") or shutil.which("perf_analyzer", path=str(Path(sys.prefix) / "bin"))
    if found:
        return found, ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        client = f"tritonclient {version('tritonclient')} is installed"
    except PackageNotFoundError:
        client = "tritonclient is not installed"
    return None, (f"perf_analyzer is neither on PATH nor in {Path(sys.prefix) / 'bin'} ({client}; the tritonclient==2.51.0 wheel "
                  "ships it, and it runs here with libb64-0d and nvidia-cuda-runtime-cu12's libcudart.so.12)")


def perf_analyzer(url: str, model: str, graph_models: Sequence[str], kinds: dict[str, list], concurrency: Sequence[int],
                  window_ms: int, workdir: Path) -> dict[str, Any]:
    """perf_analyzer (gRPC, batch 1, measurement windows of ``window_ms``) on each kind of traffic
    at each concurrency, with the same requests as input data (each with its own shape). Returns per kind a list of
    ``{clients, requests_per_s, p50_ms, p99_ms}`` (or ``{clients, failed: <its output>}``), or
    ``{"status": "not run: <reason>"}`` (it is never required)."""
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
            # A noisy shared machine rarely gives three windows within the default 10%: accept any
            # spread, the windows' numbers are averaged all the same.
            command = [binary, "-m", model, "-u", url, "-i", "grpc", "-b", "1", "--input-data", str(data),
                       "--concurrency-range", f"{clients}:{clients}", "--measurement-interval", str(window_ms),
                       "--stability-percentage", "1000", "--max-trials", "5", "-f", str(table), *extra]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=max(120.0, 20 * window_ms / 1e3))
            except (OSError, subprocess.TimeoutExpired) as error:
                report[kind].append({"clients": clients, "failed": str(error)})
                continue
            if done.returncode != 0 or not table.is_file():
                report[kind].append({"clients": clients, "failed": f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"})
                continue
            row = next(csv.DictReader(table.read_text().splitlines()))
            report[kind].append({"clients": clients, "requests_per_s": float(row["Inferences/Second"]),
                                 "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3})
    report["command_example"] = command
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
        measured = [p for p in pa.get(kind, []) if "failed" not in p] if pa.get("status") == "ok" else []
        if measured:
            axes.plot([p["requests_per_s"] for p in measured], [p["p50_ms"] for p in measured], "s:", label=f"perf_analyzer, {kind}: p50")
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
