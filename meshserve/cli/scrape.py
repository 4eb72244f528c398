"""Reading routers' /metrics for ``meshserve top``: scrape, then rates and percentiles between two scrapes.

Pure functions over the Prometheus text format, apart from :func:`fetch`. Percentiles
come from the latency histogram's bucket counts gained between two scrapes, interpolated
within a bucket as Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

CALLS = "meshserve_router_calls_total"
BUCKETS = "meshserve_router_call_duration_seconds_bucket"
MODEL_INFLIGHT = "meshserve_router_model_inflight_requests"
INFLIGHT = "meshserve_router_inflight_requests"
WANTED = (CALLS, BUCKETS, MODEL_INFLIGHT, INFLIGHT)

Version = tuple[str, str]  # (model, version)


@dataclass
class Scrape:
    """One router's counters at one moment, summed over methods and runtime kinds."""

    calls: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    # model version -> upper bound -> calls at most that long (cumulative, as exposed)
    buckets: dict[Version, dict[float, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    inflight: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    total_inflight: float = 0.0


@dataclass(frozen=True)
class Row:
    model: str
    version: str
    calls_per_s: float
    errors_per_s: float
    p50_s: float | None  # None: no call in the interval; inf: past the largest bucket
    p99_s: float | None
    inflight: float


def fetch(address: str, timeout: float) -> str:
    """The router series ``meshserve top`` reads, from http://ADDRESS/metrics."""
    query = urllib.parse.urlencode([("name[]", name) for name in WANTED])
    url = address if "://" in address else f"http://{address}"
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics?{query}", timeout=timeout) as response:  # noqa: S310
        text: str = response.read().decode()
    return text


def parse(text: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("model", ""), labels.get("version", ""))
            if sample.name == CALLS:
                scrape.calls[key] += sample.value
                if labels.get("code") != "OK":
                    scrape.errors[key] += sample.value
            elif sample.name == BUCKETS:
                scrape.buckets[key][float(labels["le"])] += sample.value
            elif sample.name == MODEL_INFLIGHT:
                scrape.inflight[key] += sample.value
            elif sample.name == INFLIGHT:
                scrape.total_inflight += sample.value
    return scrape


def _gain(after: float, before: float) -> float:
    """What a counter gained; a counter that went down was reset (its router restarted)."""
    return after - before if after >= before else after


@dataclass
class Window:
    """What all routers did between two scrapes (gains summed over routers)."""

    seconds: float
    calls: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[Version, dict[float, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    inflight: dict[Version, float] = field(default_factory=lambda: defaultdict(float))
    total_inflight: float = 0.0

    def add(self, before: Scrape | None, after: Scrape) -> None:
        """One router's gains (all of its counts when it has no earlier scrape: they are not rates then)."""
        for key, value in after.calls.items():
            self.calls[key] += _gain(value, before.calls.get(key, 0.0)) if before else 0.0
        for key, value in after.errors.items():
            self.errors[key] += _gain(value, before.errors.get(key, 0.0)) if before else 0.0
        for key, bounds in after.buckets.items():
            earlier = before.buckets.get(key, {}) if before else None
            for bound, value in bounds.items():
                self.buckets[key][bound] += _gain(value, earlier.get(bound, 0.0)) if earlier is not None else 0.0
        for key, value in after.inflight.items():
            self.inflight[key] += value
        self.total_inflight += after.total_inflight

    def rows(self) -> list[Row]:
        """One row per model version seen, busiest first."""
        rate = 1.0 / self.seconds if self.seconds > 0 else 0.0
        keys = set(self.calls) | set(self.inflight)
        out = [Row(model, version, self.calls.get((model, version), 0.0) * rate,
                   self.errors.get((model, version), 0.0) * rate,
                   quantile(0.5, self.buckets.get((model, version), {})),
                   quantile(0.99, self.buckets.get((model, version), {})),
                   self.inflight.get((model, version), 0.0))
               for model, version in keys]
        return sorted(out, key=lambda r: (-r.calls_per_s, -r.inflight, r.model, r.version))


def quantile(q: float, cumulative: dict[float, float] | Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as (upper bound, cumulative count) pairs.

    As Prometheus's histogram_quantile: linear within the bucket holding the rank, the
    first bucket starting at 0; None without observations; inf when the rank lies past the
    largest finite bound (callers show "> that bound").
    """
    pairs: Sequence[tuple[float, float]] = sorted(cumulative.items() if isinstance(cumulative, dict) else cumulative)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank and count > below:
            if math.isinf(bound):
                return math.inf
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return math.inf


def largest_bound(cumulative: dict[float, float]) -> float:
    finite = [b for b in cumulative if not math.isinf(b)]
    return max(finite, default=0.0)
