"""Audit ingest throughput: events already on JetStream into SQLite, through the real consumer.

    .venv/bin/python -m meshserve.services.audit.bench --events 50000

Publishes N call events to a fresh local NATS, then starts the audit service's consumer
on a fresh SQLite file and times how long it takes to store them all (fetch, decode,
chain, commit, ack). Also times the store alone, without NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import nats

from meshserve.audit.stream import SUBJECT, ensure_stream
from meshserve.local.nats import NatsServer
from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .consumer import Consumer
from .query import Filter
from .settings import AuditSettings
from .store import Incoming, Store


def _event(i: int) -> bytes:
    return audit_pb2.CallEvent(
        event_id=f"bench-{i:08d}", request_id=f"req-{i}", principal="anonymous", peer="ipv4:127.0.0.1:40000",
        model="iris", requested_version="", resolved_version="1", runtime_kind="python", runtime_id="python-1",
        start_unix_nanos=time.time_ns(), duration_nanos=900_000, status_code=0, input_digest="ab" * 32,
        output_digest="cd" * 32, input_bytes=180, output_bytes=90, method="ModelInfer", router_id="router-1",
    ).SerializeToString(deterministic=True)


def _store_only(folder: Path, n: int, batch: int) -> float:
    store = Store.open(f"sqlite:///{folder / 'store-only.db'}")
    events = [Incoming(_event(i), SUBJECT) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, batch):
        store.ingest(events[i:i + batch])
    elapsed = time.perf_counter() - started
    store.close()
    return n / elapsed


async def _through_nats(folder: Path, n: int, batch: int) -> float:
    server = NatsServer(folder / "nats", folder / "nats.log")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_stream(js)
        await asyncio.gather(*[await js.publish_async(SUBJECT, _event(i)) for i in range(n)])
        await nc.close()
        settings = AuditSettings.model_validate(
            {"nats_url": server.url, "database": f"sqlite:///{folder / 'audit.db'}", "batch_size": batch})
        store = Store.open(settings.database)
        consumer = Consumer(store, settings)
        started = time.perf_counter()
        consumer.start()
        while consumer.stats.stored < n:  # noqa: ASYNC110 - polling a counter, 10 ms resolution is plenty
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await consumer.stop()
        assert len(store.query(Filter(), 0, 10)) == 10 and store.verify().ok
        store.close()
        return n / elapsed
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshserve-audit-bench-") as tmp:
        folder = Path(tmp)
        store_rate = _store_only(folder, args.events, args.batch_size)
        nats_rate = asyncio.run(_through_nats(folder, args.events, args.batch_size))
    print(f"audit ingest into SQLite, {args.events} events, batches of {args.batch_size}:")
    print(f"  JetStream -> consumer -> SQLite: {nats_rate:,.0f} events/s (connection setup included)")
    print(f"  store alone (decode, chain, commit): {store_rate:,.0f} events/s")
    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "audit_ingest.json").write_text(json.dumps({
        "events": args.events, "batch_size": args.batch_size, "database": "sqlite",
        "through_nats_events_per_s": nats_rate, "store_alone_events_per_s": store_rate}, indent=2))


if __name__ == "__main__":
    main()
