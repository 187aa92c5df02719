"""The load benchmark's step policy: which rates to offer, when a step is sustained, when to stop
climbing, and the headline figures read off the steps. Pure functions of step summaries (the
dicts bench.loadgen writes), no processes and no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: A step is sustained when p99 is at most this and the achieved rate at least RATE_FRACTION.
P99_LIMIT_MS = 50.0
#: The GPU target's latency bound: the highest rate whose p99 stays within it is reported too.
P99_TIGHT_MS = 5.0
RATE_FRACTION = 0.9
#: Bisections between the last sustained and the first unsustained ladder rate.
REFINEMENTS = 2
#: A step is measured over at least this many requests (after warm-up), so that its p99 is not
#: one outlier: at low rates the step runs longer than --duration.
MIN_MEASURED_REQUESTS = 300


def ladder(start: float, factor: float, maximum: float) -> list[float]:
    """Geometric rates ``start * factor**k`` up to ``maximum``, rounded to 3 significant digits."""
    if start <= 0 or factor <= 1:
        raise ValueError(f"need start > 0 and factor > 1, got {start} and {factor}")
    rates: list[float] = []
    rate = start
    while rate <= maximum * (1 + 1e-9):
        rates.append(float(f"{rate:.3g}"))
        rate *= factor
    return rates


def step_seconds(rate: float, duration: float, warmup: float) -> float:
    """How long a step at ``rate`` runs: ``duration``, or longer so that the measured window
    (after ``warmup``) holds at least MIN_MEASURED_REQUESTS requests."""
    return max(duration, warmup + math.ceil(MIN_MEASURED_REQUESTS / rate))


def saturated(step: dict[str, Any]) -> bool:
    """The service did not keep up: under 90% of the offered rate answered OK."""
    offered = step.get("scheduled_rate", step["offered_rate"])
    return bool(step["achieved_rate"] < RATE_FRACTION * offered)


def sustained(step: dict[str, Any]) -> bool:
    """p99 within the limit and at least 90% of the offered rate answered OK.

    The offered rate is the one counted in the window (``scheduled_rate``), so that at a few
    requests per second the rounding to whole requests does not fail a step.
    """
    p99 = step["latency"]["p99_ms"]
    offered = step.get("scheduled_rate", step["offered_rate"])
    return (
        p99 is not None and p99 <= P99_LIMIT_MS and step["achieved_rate"] >= RATE_FRACTION * offered
    )


def best_rate(steps: list[dict[str, Any]], key: str, rule: Any = sustained) -> float | None:
    """The largest ``key`` among steps the rule accepts."""
    values = [step[key] for step in steps if rule(step)]
    return max(values) if values else None


def within_p99(step: dict[str, Any], limit_ms: float = P99_LIMIT_MS) -> bool:
    p99 = step["latency"]["p99_ms"]
    return p99 is not None and p99 <= limit_ms


def within_tight_p99(step: dict[str, Any]) -> bool:
    """p99 within P99_TIGHT_MS and the offered rate kept up with (a step that shed load or fell
    behind has a short p99 for the wrong reason)."""
    return within_p99(step, P99_TIGHT_MS) and not saturated(step)


def step_at(steps: list[dict[str, Any]], offered: float) -> dict[str, Any] | None:
    return next((step for step in steps if math.isclose(step["offered_rate"], offered)), None)


def service_rates(rates: list[float], name: str, naive_steps: list[dict[str, Any]]) -> list[float]:
    """The rates ``name`` is offered: the real service's ladder starts exactly at the naive
    service's best sustained rate (where the overhead is compared), then climbs the ladder above
    it; every other ladder is ``rates`` as given."""
    naive_rate = best_rate(naive_steps, "offered_rate")
    if name == "service" and naive_rate is not None:
        return [naive_rate, *(rate for rate in rates if rate > naive_rate)]
    return rates


def climb(rates: list[float], measure: Callable[[float], dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps up the ladder (``measure(rate)`` runs one step), stops after the first step that is
    not sustained, then narrows the gap between the last sustained rate and that one by
    REFINEMENTS geometric bisections (a ladder step of 1.6x alone would understate the maximum by
    up to 60%). The steps, by offered rate."""
    steps: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        step = measure(rate)
        steps.append(step)
        return sustained(step)

    good: float | None = None
    for rate in rates:
        if not run(rate):
            bad = rate
            break
        good = rate
    else:
        return steps
    for _ in range(REFINEMENTS if good is not None else 0):
        assert good is not None
        middle = float(f"{math.sqrt(good * bad):.3g}")
        if middle in (good, bad):
            break
        if run(middle):
            good = middle
        else:
            bad = middle
    return sorted(steps, key=lambda step: step["offered_rate"])


def comparison(
    service: list[dict[str, Any]], naive: list[dict[str, Any]], floor_ms: float | None
) -> dict[str, Any]:
    """The headline figures; None where a side was not measured or never met the rule.

    * naive max sustainable rate: the highest offered rate the naive service sustained;
    * service overhead: the service's p50 at that rate minus the model-only median (latency from
      the actual send, so the generator's timer granularity is not counted; from the due time
      too, for reference);
    * throughput within p99 <= 50 ms: the highest achieved rate of a step with p99 <= 50 ms;
    * against the naive peak: the service's figure over the naive service's best achieved rate at
      any latency. The naive peak bounds its throughput under every latency limit, so this ratio
      is a lower bound, defined even when the naive service never meets p99 <= 50 ms, but only
      when the naive ladder reached a saturated step (else its peak bounds nothing).
    """
    naive_rate = best_rate(naive, "offered_rate")
    # Where the naive service sustained nothing, the service's lowest step stands in.
    at_rate = (
        naive_rate
        if naive_rate is not None
        else min((step["offered_rate"] for step in service), default=None)
    )
    at = step_at(service, at_rate) if at_rate is not None else None
    overhead = overhead_scheduled = None
    if at is not None and floor_ms is not None and at["ok"]:
        overhead = at["latency_from_send"]["p50_ms"] - floor_ms
        overhead_scheduled = at["latency"]["p50_ms"] - floor_ms
    service_max = best_rate(service, "achieved_rate", within_p99)
    service_max_tight = best_rate(service, "achieved_rate", within_tight_p99)
    naive_max = best_rate(naive, "achieved_rate", within_p99)
    ratio = service_max / naive_max if service_max and naive_max else None
    # The naive peak bounds its throughput only if its ladder went past its capacity.
    naive_peak = (
        max((step["achieved_rate"] for step in naive), default=None)
        if any(saturated(step) for step in naive)
        else None
    )
    lower_bound = service_max / naive_peak if service_max and naive_peak else None
    return {
        "naive_max_sustainable_rate": naive_rate,
        "overhead_at_rate": at_rate if at is not None else None,
        "service_p50_minus_floor_ms": overhead,
        "service_p50_minus_floor_from_due_ms": overhead_scheduled,
        "service_stage_means_at_rate_ms": at.get("stage_means_ms") if at is not None else None,
        "service_max_rate_p99_50ms": service_max,
        "service_max_rate_p99_5ms": service_max_tight,
        "naive_max_rate_p99_50ms": naive_max,
        "throughput_ratio": ratio,
        "naive_peak_rate": naive_peak,
        "throughput_ratio_vs_naive_peak": lower_bound,
        "targets": {
            "overhead_ms_at_most": 2.0,
            "throughput_ratio_at_least": 5.0,
            "overhead_met": overhead is not None and overhead <= 2.0,
            "ratio_met": max(ratio or 0.0, lower_bound or 0.0) >= 5.0,
        },
    }
