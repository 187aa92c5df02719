"""The load benchmark's report: the markdown table and its summary lines, the latency plot, and
the result files (NAME.json, NAME.md, NAME.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.ladder import MIN_MEASURED_REQUESTS, P99_LIMIT_MS, P99_TIGHT_MS, RATE_FRACTION
from bench.report import RESULTS_DIR, markdown_table, write_result
from bench.scrape import STAGE_METRIC, STAGES
from bench.workload import HISTORY


def status_text(counts: dict[str, int]) -> str:
    other = {code: n for code, n in counts.items() if code != "200"}
    return ", ".join(f"{code}: {n}" for code, n in sorted(other.items())) or "0"


def table(results: dict[str, Any]) -> str:
    columns = [
        "service", "offered req/s", "achieved req/s", "candidates/s", "p50 ms", "p95 ms",
        "p99 ms", "mean batch candidates", "mean batch requests", "in service ms",
        "non-200", "send lag p99 ms",
    ]  # fmt: skip
    rows = []
    for name, run in results["services"].items():
        for step in run["steps"]:
            latency = step["latency"]
            rows.append(
                [
                    name, f"{step['offered_rate']:g}", f"{step['achieved_rate']:.1f}",
                    f"{step['candidates_per_s']:,.0f}", _ms(latency["p50_ms"]),
                    _ms(latency["p95_ms"]), _ms(latency["p99_ms"]),
                    _num(step["mean_batch_candidates"]), _num(step["mean_batch_requests"]),
                    _stages_cell(step.get("stage_means_ms")), status_text(step["status_counts"]),
                    _ms(step["send_lag"]["p99_ms"]),
                ]
            )  # fmt: skip
    return (
        f"Open-loop load, 1 user x {results['candidates']} candidates, history {HISTORY}, "
        f"model on {_provider(results)}; "
        f"{results['step_seconds']:g} s per step ({results['warmup_seconds']:g} s warm-up left "
        f"out; longer at low rates, so that at least {MIN_MEASURED_REQUESTS} requests are "
        "measured); latency from the scheduled send time (queueing in the generator counts). "
        "In service: mean ms per request inside the service after the warm-up (from "
        f"``{STAGE_METRIC}``), as features from Redis / queue / model batch (hand-off to the "
        "model thread and back included) / total.\n\n"
        + markdown_table(columns, rows)
        + "\n\n"
        + "\n".join(f"- {line}" for line in summary_lines(results))
        + "\n"
    )


def _comparison_point(summary: dict[str, Any]) -> str:
    """Where the overhead was read: the naive service's best sustained rate, or, when the naive
    service was not run or sustained nothing, the service's lowest step (see comparison)."""
    if summary["naive_max_sustainable_rate"] is not None:
        return "at a load the naive service sustains"
    return "at its lowest measured load (no sustained naive rate to compare at)"


def summary_lines(results: dict[str, Any]) -> list[str]:
    floor = results["model_floor"]
    summary = results["summary"]
    lines = [
        f"Model-only floor (onnxruntime {_provider(results)}, {floor['graph']} graph, 1 x "
        f"{results['candidates']}, history {HISTORY}): median {floor['median_ms']:.3f} ms, "
        f"p99 {floor['p99_ms']:.3f} ms "
        f"({floor['calls']:,} calls).",
        f"Naive max sustainable rate (p99 <= {P99_LIMIT_MS:g} ms, >= "
        f"{RATE_FRACTION:.0%} of offered): {_rate(summary['naive_max_sustainable_rate'])}.",
        f"Service p50 {_comparison_point(summary)} "
        f"({_rate(summary['overhead_at_rate'])}) minus model-only time (target <= 2 ms): "
        f"{_ms(summary['service_p50_minus_floor_ms'])} ms from the actual send, "
        f"{_ms(summary['service_p50_minus_floor_from_due_ms'])} ms from the due time.",
        f"Max throughput at p99 <= {P99_LIMIT_MS:g} ms: service "
        f"{_rate(summary['service_max_rate_p99_50ms'])}, naive "
        f"{_rate(summary['naive_max_rate_p99_50ms'])}, ratio "
        f"{_ratio(summary['throughput_ratio'])} (target >= 5x); against the naive service's "
        f"peak at any latency ({_rate(summary['naive_peak_rate'])}): at least "
        f"{_ratio(summary['throughput_ratio_vs_naive_peak'])}.",
        f"Max throughput at p99 <= {P99_TIGHT_MS:g} ms (offered rate kept up with): service "
        f"{_rate(summary.get('service_max_rate_p99_5ms'))}.",
        *_stage_lines(summary.get("service_stage_means_at_rate_ms"), floor["median_ms"]),
        *_penalty_lines(results.get("idle_penalty")),
        f"Load average at start: {results['load_average']}; the generator, the services and "
        "Redis share the machine's cores.",
    ]
    return lines


def _provider(results: dict[str, Any]) -> str:
    return "CUDA" if results.get("provider") == "cuda" else "CPU"


def _stages_cell(means: dict[str, float] | None) -> str:
    if not means:
        return "-"
    return " / ".join(_ms(means.get(stage)) for stage in STAGES)


def _stage_lines(means: dict[str, float] | None, floor_ms: float) -> list[str]:
    """Where the service's own time went at the comparison rate (the rest of the client's p50
    is HTTP, JSON and the hand-offs between the generator and the service)."""
    if not means or "total" not in means:
        return []
    parts = ", ".join(
        f"{label} {_ms(means.get(stage))} ms"
        for stage, label in (("redis", "features from Redis"), ("queue", "queue"))
    )
    return [
        f"Inside the service at that rate (mean per request, from /metrics): {parts}, model "
        f"batch {_ms(means.get('model'))} ms (the floor above is {floor_ms:.3f} ms: the rest "
        f"is the hand-off to the model thread and back, packing, and a colder model call), "
        f"total {_ms(means['total'])} ms."
    ]


def _penalty_lines(penalty: dict[str, Any] | None) -> list[str]:
    if not penalty:
        return []
    return [
        f"Idle penalty of this machine (nothing else running; back to back vs one call every "
        f"1/{penalty['rate']:g} s): the model call {penalty['model_back_to_back_ms']:.3f} vs "
        f"{penalty['model_paced_ms']:.3f} ms, a Redis GET round trip "
        f"{penalty['redis_get_back_to_back_ms']:.3f} vs {penalty['redis_get_paced_ms']:.3f} ms. "
        "A request at low load pays the paced figures: its model call, its Redis round trip "
        "and its other hand-offs (client to event loop, loop to model thread and back) wake "
        "sleeping cores."
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:,.1f} req/s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def plot(results: dict[str, Any], path: Path) -> None:
    """p50 and p99 against achieved rate for each service; the model-only floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = {"service": "tab:blue", "naive": "tab:red"}
    for name, run in results["services"].items():
        steps = [step for step in run["steps"] if step["ok"]]
        rates = [step["achieved_rate"] for step in steps]
        colour = colours.get(name, "tab:gray")
        for key, style in (("p50_ms", "-o"), ("p99_ms", "--s")):
            values = [step["latency"][key] for step in steps]
            axes.plot(rates, values, style, color=colour, label=f"{name} {key[:3]}")
    floor = results["model_floor"]["median_ms"]
    axes.axhline(floor, color="black", linewidth=1, label=f"model-only median {floor:.2f} ms")
    axes.axhline(P99_LIMIT_MS, color="gray", linestyle=":", label=f"{P99_LIMIT_MS:g} ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("achieved rate (OK requests/s)")
    axes.set_ylabel("latency from scheduled send (ms)")
    axes.set_title(
        f"Open-loop load: 1 user x {results['candidates']} candidates, history {HISTORY}, "
        f"{_provider(results)}"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_load_result(name: str, results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """NAME.json, NAME.md (the table) and NAME.png (the plot) into ``out_dir`` or
    bench/results; returns the markdown path."""
    markdown = write_result(name, results, table(results), out_dir)
    plot(results, (out_dir or RESULTS_DIR) / f"{name}.png")
    return markdown
