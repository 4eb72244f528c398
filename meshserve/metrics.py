"""Prometheus metrics every service shares: the /metrics HTTP server and two helpers.

Each service keeps its series in a :class:`~prometheus_client.CollectorRegistry` of its
own (never the global one, so several services in one test process do not collide) and
serves it with :class:`MetricsServer` on its ``host`` and ``metrics_port``.

Two kinds of series:

- **events** (calls, loads, placements) are counted and timed where they happen; the
  per-call ones through :class:`CallSeries`, which keeps each label set's tally in a
  dict so the hot path pays one dict lookup, a bisect and two additions;
- **state** (in-flight calls, spool size, connectivity, memory) is read when Prometheus
  scrapes, through :class:`Sampled`: the code keeps plain numbers it has anyway, and
  nothing is paid per call.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshserve.ports import PortInUse

log = logging.getLogger(__name__)

PREFIX = "meshserve"
# Seconds: inference calls (sub-millisecond through the mesh link, up to long deadlines).
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds: loading a model, placing one, storing a batch of audit events.
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CODE_NAMES: dict[grpc.StatusCode, str] = {code: code.name for code in grpc.StatusCode}

Samples = Iterable[tuple[Sequence[str], float]]


class Tally:
    """The calls of one label set: counts per latency bucket (the last one past every bound) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class CallSeries(Collector):
    """``<prefix>_calls_total`` and ``<prefix>_call_duration_seconds`` with the same labels.

    The two are one :class:`Tally` per label set, kept in a dict: the per-call cost is a
    dict lookup, a bisect and two additions, with no lock (calls are counted on the event
    loop; the metrics thread copies what it reads). Callers keep the label values bounded
    (known models and versions, status code names).
    """

    def __init__(self, registry: CollectorRegistry, prefix: str, labelnames: Sequence[str], what: str,
                 buckets: Sequence[float] = CALL_BUCKETS) -> None:
        self.calls_name = f"{prefix}_calls"
        self.duration_name = f"{prefix}_call_duration_seconds"
        self.labelnames = tuple(labelnames)
        self.what = what
        self.bounds = tuple(sorted(buckets))
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._tallies: dict[tuple[str, ...], Tally] = {}
        registry.register(self)

    def series(self, labels: tuple[str, ...]) -> Tally:
        """The tally of one label set, created on first use."""
        tally = self._tallies.get(labels)
        if tally is None:
            tally = self._tallies[labels] = Tally(self.bounds)
        return tally

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        (self._tallies.get(labels) or self.series(labels)).observe(seconds)

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (CounterMetricFamily(self.calls_name, f"{self.what}, by outcome", labels=self.labelnames),
                HistogramMetricFamily(self.duration_name, f"{self.what}: seconds from arrival to answer",
                                      labels=self.labelnames))

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        calls, duration = self._families()
        for labels, tally in self._tallies.copy().items():
            cumulative = list(accumulate(tally.counts.copy()))
            calls.add_metric(labels, cumulative[-1])
            duration.add_metric(labels, list(zip(self._les, cumulative, strict=True)), tally.sum)
        yield calls
        yield duration


class Sampled(Collector):
    """Gauges and counters read when Prometheus scrapes, from functions over plain numbers.

    The functions run on the metrics server's thread: they should only read attributes
    and copy dictionaries (``dict.copy()`` is atomic), never await or block. Add every
    series, then :meth:`register`.
    """

    def __init__(self) -> None:
        self._series: list[tuple[str, str, str, Sequence[str], Callable[[], Any]]] = []

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._series.append(("gauge", name, doc, (), read))

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A counter (``name`` without ``_total``) kept as a plain number that only grows."""
        self._series.append(("counter", name, doc, (), read))

    def labelled_gauge(self, name: str, doc: str, labelnames: Sequence[str], read: Callable[[], Samples]) -> None:
        """A gauge with labels; ``read`` returns (label values, value) pairs."""
        self._series.append(("gauge", name, doc, labelnames, read))

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        for kind, name, doc, labelnames, _ in self._series:
            yield self._family(kind, name, doc, labelnames)

    def collect(self) -> Iterator[Metric]:
        for kind, name, doc, labelnames, read in self._series:
            for _ in range(3):  # a dictionary the service changed while this thread read it: read again
                family = self._family(kind, name, doc, labelnames)
                try:
                    if labelnames:
                        for values, value in read():
                            family.add_metric(list(values), value)
                    else:
                        family.add_metric([], float(read()))
                except Exception:  # one unreadable series must not fail the scrape
                    log.debug("reading metric %s failed", name, exc_info=True)
                    continue
                yield family
                break

    @staticmethod
    def _family(kind: str, name: str, doc: str, labelnames: Sequence[str]) -> CounterMetricFamily | GaugeMetricFamily:
        if kind == "counter":
            return CounterMetricFamily(name, doc, labels=labelnames)
        return GaugeMetricFamily(name, doc, labels=labelnames)


def up(value: bool) -> float:
    """1.0 for a connection that is up, else 0.0."""
    return 1.0 if value else 0.0


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """``/metrics`` over plain HTTP for one registry, served from a daemon thread.

    :meth:`start` binds ``host``:``port`` (0: a free port; -1: no server) and returns the
    address (empty when disabled). With ``fallback``, a port already in use gives way to
    a free one, with a warning: the announce file says which.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.address = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int, *, fallback: bool = False) -> str:
        if port < 0:
            return ""
        disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series: twice the output, unread
        try:  # http.server sets SO_REUSEADDR, never SO_REUSEPORT: the port is ours alone
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            what = f"cannot serve metrics on {format_address(host, port)}"
            if e.errno != errno.EADDRINUSE:
                raise OSError(e.errno, f"{what}: {e.strerror}") from e
            if not (fallback and port):
                raise PortInUse(host, port, what) from e
            self._server, self._thread = start_http_server(0, addr=host, registry=self.registry)
            log.warning("metrics port %d is in use: serving metrics on port %d instead (pass --metrics-port)",
                        port, self._server.server_port)
        self.address = format_address(host, int(self._server.server_port))
        return self.address

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
