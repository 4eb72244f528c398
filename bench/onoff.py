"""What the on-against-off benchmarks share (access control, TLS, tracing): alternating h2load rounds.

Each set-up is measured at concurrency 1 (for latency) and 16 (for throughput) in every
round, rounds alternating between set-ups so drift in the machine's load hits them alike;
the figure of a set-up is the median over its rounds.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.h2load import run_h2load
from bench.loadgen import Result

LEVELS = (1, 16)


@dataclass(frozen=True)
class Setup:
    address: str
    metadata: Sequence[tuple[str, str]] = ()
    tls_ca: Path | None = None


@dataclass
class Figures:
    """Median p50, p99 and throughput of each (set-up, concurrency), and every round's result."""

    runs: dict[tuple[str, int], list[Result]] = field(default_factory=dict)

    def median(self, label: str, concurrency: int, what: str) -> float:
        values = [r.throughput if what == "throughput" else r.percentile_ms(50 if what == "p50" else 99)
                  for r in self.runs[label, concurrency]]
        return statistics.median(values)

    @property
    def errors(self) -> int:
        return sum(r.errors for v in self.runs.values() for r in v)

    def ratios(self, on: str, off: str) -> tuple[float, float]:
        """(p50 at concurrency 1, throughput at 16) of ``on`` over ``off``: the median of the
        round-by-round ratios.

        Each round measures both set-ups back to back, so its ratio compares figures taken
        seconds apart; the machine's drift between rounds (as large as the costs measured,
        on a shared 2-core machine) cancels out of it, where it would not out of a ratio of
        medians taken from different rounds.
        """
        return (statistics.median(self.round_ratios(on, off, "p50")),
                statistics.median(self.round_ratios(on, off, "throughput")))

    def round_ratios(self, on: str, off: str, what: str) -> list[float]:
        """``on`` over ``off`` in each round: p50 at concurrency 1, or throughput at 16."""
        if what == "p50":
            return [a.percentile_ms(50) / b.percentile_ms(50)
                    for a, b in zip(self.runs[on, 1], self.runs[off, 1], strict=True)]
        return [a.throughput / b.throughput for a, b in zip(self.runs[on, 16], self.runs[off, 16], strict=True)]

    def keyed(self, what: str) -> dict[str, float]:
        return {f"{label} c{c}": self.median(label, c, what) for label, c in self.runs}

    def save(self, stem: str, on: str, off: str, **extra: object) -> None:
        """bench/results/<stem>.json: every median, the on/off ratios, errors and ``extra``."""
        latency, throughput = self.ratios(on, off)
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps({
            "p50_ms": self.keyed("p50"), "p99_ms": self.keyed("p99"), "throughput": self.keyed("throughput"),
            "latency_ratio_c1": latency, "throughput_ratio_c16": throughput, "errors": self.errors, **extra,
        }, indent=2))

    def print_table(self, title: str, rounds: int) -> None:
        print(f"\n{title} ({os.cpu_count()} cores, h2load, median of {rounds} alternating rounds; "
              "ratios: the median of the rounds' ratios)")
        print(f"  {'set-up':26}{'c=1 p50':>10}{'c=1 p99':>10}{'c=16 calls/s':>14}")
        for label in dict.fromkeys(label for label, _ in self.runs):
            print(f"  {label:26}{self.median(label, 1, 'p50'):9.3f}ms{self.median(label, 1, 'p99'):9.3f}ms"
                  f"{self.median(label, 16, 'throughput'):14.0f}")


def alternate(request: bytes, setups: dict[str, Setup], rounds: int, *, warmup_s: float = 0.5,
              duration_s: float = 3.0) -> Figures:
    """``rounds`` rounds over every set-up, the order reversed every other round (A B, B A, ...)
    so that neither set-up always runs right after the other's load."""
    figures = Figures()
    order = list(setups.items())
    for number in range(rounds):
        for label, setup in order if number % 2 == 0 else reversed(order):
            for concurrency in LEVELS:
                figures.runs.setdefault((label, concurrency), []).append(run_h2load(
                    setup.address, request, concurrency=concurrency, warmup_s=warmup_s, duration_s=duration_s,
                    metadata=setup.metadata, tls_ca=setup.tls_ca))
    return figures
