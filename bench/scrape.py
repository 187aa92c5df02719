"""The service's ``/metrics``, read with prometheus_client's own parser: a sample's value by name
and labels, and the batch and stage histograms' sums and counts, whose deltas between two
scrapes give the mean batch size and the mean time per stage of a load step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bench.supervisor import http_get

BATCH_METRICS = ("qin_batch_candidates", "qin_batch_requests")
#: The service's per-stage histogram (label ``stage``): where a scored request's time goes inside
#: the service (redis: features; queue: waiting for the model; model: its batch, from the hand-off
#: to the model thread to the result back on the event loop; total: arrival to scores).
STAGE_METRIC = "qin_stage_duration_seconds"
STAGES = ("redis", "queue", "model", "total")


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a Prometheus text exposition (``_bucket``, ``_sum``, ``_count``,
    ``_total`` ... named as exposed)."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def selector_labels(selector: str) -> dict[str, str]:
    """``'a="x",b="y"'`` (as written between the braces of a series) -> ``{"a": "x", "b": "y"}``,
    read by the same parser as the exposition."""
    if not selector:
        return {}
    (sample,) = samples(f"series{{{selector}}} 0\n")
    return dict(sample.labels)


def sample_value(
    text: str, name: str, labels: Mapping[str, str] | str | None = None
) -> float | None:
    """The value of the sample ``name`` whose labels are exactly ``labels`` (a mapping, or a
    selector such as ``'status="200"'``; none by default); None when there is no such sample."""
    wanted = selector_labels(labels) if isinstance(labels, str) else dict(labels or {})
    return next((s.value for s in samples(text) if s.name == name and s.labels == wanted), None)


def parse_metrics(text: str, names: tuple[str, ...] = BATCH_METRICS) -> dict[str, float]:
    """``NAME_sum`` and ``NAME_count`` of the given histograms, summed over label sets; the
    stage histogram per stage, as ``STAGE_METRIC:STAGE_sum`` and ``..._count``."""
    wanted = {f"{name}_{part}" for name in names for part in ("sum", "count")}
    per_stage = {f"{STAGE_METRIC}_{part}": part for part in ("sum", "count")}
    values: dict[str, float] = {}
    for sample in samples(text):
        key = sample.name
        if key in per_stage:
            stage = sample.labels.get("stage")
            if stage is None:
                continue
            key = f"{STAGE_METRIC}:{stage}_{per_stage[key]}"
        elif key not in wanted:
            continue
        values[key] = values.get(key, 0.0) + float(sample.value)
    return values


def scrape(base: str) -> dict[str, float]:
    """The batch and stage histograms from ``base``/metrics; empty when the service has none
    (the naive one)."""
    try:
        status, body = http_get(f"{base}/metrics")
    except OSError:
        return {}
    return parse_metrics(body) if status == 200 else {}


def mean_batch(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    """Mean observation of histogram ``name`` between two scrapes; None when absent or idle."""
    total, count = f"{name}_sum", f"{name}_count"
    if total not in before or total not in after or count not in after:
        return None
    batches = after[count] - before.get(count, 0.0)
    return (after[total] - before[total]) / batches if batches > 0 else None


def stage_means_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """Mean milliseconds per stage between two scrapes; None when the service has no stages
    (the naive one) or scored nothing in between."""
    means = {}
    for stage in STAGES:
        mean = mean_batch(before, after, f"{STAGE_METRIC}:{stage}")
        if mean is not None:
            means[stage] = mean * 1e3
    return means or None
