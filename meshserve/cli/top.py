"""``meshserve top``: the models' traffic through one or more routers, live in the terminal.

Every ``--interval`` seconds it scrapes each router's /metrics and shows, per model and
version, calls and errors per second, p50 and p99 latency (from the latency histogram's
bucket counts gained since the previous scrape) and the calls in flight to runtimes.
"""

from __future__ import annotations

import http.client
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from meshserve.cli.common import METRICS, cli_errors, console, metrics_addresses
from meshserve.cli.scrape import Row, Scrape, Window, fetch, largest_bound, parse
from meshserve.cli.text import Table, plain

UNKNOWN_MODEL = "(unknown)"  # calls refused before their model was known, or naming no model in the mesh


class Scraper:
    """Scrapes every router at once; keeps each one's previous scrape."""

    def __init__(self, targets: list[str], timeout: float) -> None:
        self.targets = targets
        self.timeout = timeout
        self.previous: dict[str, Scrape] = {}
        self.errors: dict[str, str] = {}
        self._at = 0.0
        self._pool = ThreadPoolExecutor(max(1, len(targets)), thread_name_prefix="scrape")

    def _one(self, target: str) -> Scrape | str:
        try:
            return parse(fetch(target, self.timeout))
        except (OSError, http.client.HTTPException) as e:
            return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e) or type(e).__name__
        except ValueError as e:  # not the Prometheus text format
            return f"unreadable metrics: {e}"

    def window(self) -> Window:
        """Scrape all routers: what they did since the previous call (rates are zero on the first)."""
        results = list(self._pool.map(self._one, self.targets))
        now = time.monotonic()
        window = Window(now - self._at if self._at else 0.0)
        self._at = now
        self.errors = {}
        for target, result in zip(self.targets, results, strict=True):
            if isinstance(result, str):
                self.errors[target] = result
                self.previous.pop(target, None)
                continue
            window.add(self.previous.get(target), result)
            self.previous[target] = result
        return window

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _latency(seconds: float | None, bound: float) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f">{bound:g} s"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def render(window: Window, scraper: Scraper, interval: float) -> Group:
    """The table of model versions and the footer: routers answering, totals, scrape errors."""
    table = Table("model", "version", "calls/s", "errors/s", "p50", "p99", "in flight",
                  title=f"meshserve top: every {interval:g} s", title_justify="left")
    for column in table.columns[2:]:
        column.justify = "right"
    rows: list[Row] = window.rows()
    for row in rows:
        buckets = window.buckets.get((row.model, row.version), {})
        bound = largest_bound(buckets)
        table.add_row(row.model or UNKNOWN_MODEL, row.version or "-", _rate(row.calls_per_s),
                      Text(_rate(row.errors_per_s), style="red" if row.errors_per_s else ""),
                      _latency(row.p50_s, bound), _latency(row.p99_s, bound), f"{row.inflight:g}")
    answered = len(scraper.targets) - len(scraper.errors)
    footer = Text(f"routers: {answered} of {len(scraper.targets)} answering · "
                  f"{_rate(sum(r.calls_per_s for r in rows))} calls/s · "
                  f"{window.total_inflight:g} calls held open · scrape errors: {len(scraper.errors)}")
    lines = [plain(f"  {target}: {error}", style="red") for target, error in sorted(scraper.errors.items())]
    return Group(table, footer, *lines)


@cli_errors
def top(
    metrics: Annotated[list[str] | None, typer.Option(
        "--metrics", envvar=METRICS.env,
        help="a router's metrics host:port (repeatable; default: every router of the mesh `meshserve up` runs)")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    once: Annotated[bool, typer.Option(help="print one table (rates over one interval) and exit")] = False,
) -> None:
    """Live calls/s, errors/s, p50 and p99 latency and calls in flight per model, from the routers' metrics."""
    scraper = Scraper(metrics_addresses(list(metrics or [])), timeout=min(max(interval, 0.5), 5.0))
    try:
        first = scraper.window()
        if once:
            time.sleep(interval)
            window = scraper.window()
            console.print(render(window, scraper, interval))
            if len(scraper.errors) == len(scraper.targets):
                raise typer.Exit(1)
            return
        with Live(render(first, scraper, interval), console=console, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(scraper.window(), scraper, interval), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        scraper.close()
