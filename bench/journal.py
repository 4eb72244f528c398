"""What the call journal costs one call, in process: ``CallAudit.record`` with the journal off and each fsync policy.

The end-to-end comparison in ``bench/run.py`` measures calls through routers set up each
way; on a shared 2-core machine its noise is larger than the journal's cost. This measures
the part of the call's path the journal adds: the time ``record`` takes (and the wait for
what it returns: the fsync under ``always``, the write of a large call in a thread), per
call, one call at a time, for a 1-row and a 4 MiB iris call. Rounds alternate between
set-ups and each set-up's fastest round is its figure. "off" still builds the call's
JournalRecord (events are built from it): the figures over "off" are the journal's
writes, not all it adds to the call's path.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from meshserve.audit.journal import FsyncPolicy, Journal
from meshserve.audit.publisher import EventPublisher
from meshserve.audit.spool import Spool
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.registry.cache import Replica
from meshserve.services.router.audit import Call, CallAudit

SETUPS: tuple[FsyncPolicy | None, ...] = (None, "never", "interval", "always")
# scenario -> (rows of iris features, calls per round)
SCENARIOS = {"1 row": (1, 2000), "4 MiB input": (262_144, 10)}
METADATA = (("x-request-id", "bench-1"),)


async def _measure(folder: Path, rows: int, calls: int, rounds: int) -> dict[str, float]:
    request = build_request("iris", {"features": np.ones((rows, 4), dtype=np.float32)}).SerializeToString()
    response = oip.ModelInferResponse(model_name="iris", model_version="1").SerializeToString()
    call = Call("ModelInfer")
    call.model, call.resolved_version = "iris", "1"
    call.replica = Replica("runtime-1", "python", "127.0.0.1:1")
    audits: dict[str, CallAudit] = {}
    for fsync in SETUPS:
        label = fsync or "off"
        journal = Journal(folder / label / "journal", fsync) if fsync else None
        if journal is not None:
            journal.open()
            journal.start()
        # Never started: nothing is published, so only the call's path is timed.
        audits[label] = CallAudit(EventPublisher("nats://127.0.0.1:1", Spool(folder / label / "spool", 1 << 20)),
                                  {}, "bench", 1024, journal=journal)
    times: dict[str, list[float]] = {label: [] for label in audits}
    try:
        for number in range(rounds):  # the set-ups alternate, so the machine's drift hits them alike
            for label, audit in audits.items() if number % 2 == 0 else reversed(audits.items()):
                # always waits for the disk at every call: fewer small calls keep the round short
                n = max(1, calls // 10) if label == "always" and rows == 1 else calls
                started = time.perf_counter()
                for _ in range(n):
                    pending = audit.record(call, request, response, grpc.StatusCode.OK, "", "ipv4:127.0.0.1:1",
                                           METADATA)
                    if pending is not None:
                        await pending
                times[label].append((time.perf_counter() - started) / n * 1e6)
    finally:
        for audit in audits.values():
            if audit.journal is not None:
                await audit.journal.close()
    # The fastest round: the cost itself, with the least of other processes' load in it.
    return {label: min(values) for label, values in times.items()}


def measure(rounds: int = 8) -> dict[str, dict[str, float]]:
    """Microseconds per call, by scenario, for each set-up ("off" and the fsync policies)."""
    out = {}
    for scenario, (rows, calls) in SCENARIOS.items():
        with tempfile.TemporaryDirectory(prefix="meshserve-journal-bench-") as tmp:
            out[scenario] = asyncio.run(_measure(Path(tmp), rows, calls, rounds))
    return out


def report(figures: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for scenario, costs in figures.items():
        base = costs["off"]
        lines.append(f"\ncall journal, per call in the router's process (CallAudit.record), iris {scenario}, "
                     "one call at a time, fastest of alternating rounds")
        for label, us in costs.items():
            extra = "" if label == "off" else f"  (+{us - base:,.1f} us over off)"
            lines.append(f"  {'journal ' + label:28} {us:11,.1f} us{extra}")
    return lines


if __name__ == "__main__":
    print("\n".join(report(measure())))
