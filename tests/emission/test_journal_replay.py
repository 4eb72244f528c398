"""A router that dies before publishing: the next one on its data folder publishes the events (real NATS)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from meshserve.audit.journal import Journal, read_records
from meshserve.audit.publisher import EventPublisher
from meshserve.audit.spool import Spool
from meshserve.local.nats import NatsServer
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.registry.cache import Replica
from meshserve.services.router.audit import Call, CallAudit

from .helpers import stored_events, until


def answered_call(n: int) -> Call:
    call = Call("ModelInfer")
    call.model, call.requested_version, call.resolved_version = "iris", "", "1"
    call.replica = Replica("runtime-a", "python", "127.0.0.1:1")
    return call


async def test_the_events_of_answered_calls_survive_the_router(broker: NatsServer, tmp_path: Path) -> None:
    request = build_request("iris", {"features": np.ones((1, 4), dtype=np.float32)}).SerializeToString()
    response = oip.ModelInferResponse(model_name="iris", model_version="1").SerializeToString()
    # The first router journals five calls and dies before its batch is published (it never starts its worker).
    dead = CallAudit(EventPublisher(broker.url, Spool(tmp_path / "spool", 1 << 20)), {}, "router-a", 1024,
                     journal=Journal(tmp_path / "journal", "never"))
    assert dead.journal is not None
    dead.journal.open()
    for n in range(3):
        assert dead.record(answered_call(n), request, response, grpc.StatusCode.OK, "", "ipv4:127.0.0.1:5",
                           (("x-request-id", f"call-{n}"), ("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01"))) is None
    dead.record(answered_call(3), request, None, grpc.StatusCode.NOT_FOUND, "no such version", "ipv4:127.0.0.1:5", ())
    # A large call is journaled in a thread: the answer waits for what record returns.
    large = build_request("iris", {"features": np.ones((20_000, 4), dtype=np.float32)}).SerializeToString()
    journaling = dead.record(answered_call(4), large, response, grpc.StatusCode.OK, "", "ipv4:127.0.0.1:5", ())
    assert journaling is not None
    await journaling
    segments = sorted((tmp_path / "journal").glob("segment-*"))
    journaled = [r.event_id for segment in segments for r in read_records(segment)]
    # The next router on the same data folder publishes them, with their event ids, then empties the journal.
    journal = Journal(tmp_path / "journal", "interval")
    publisher = EventPublisher(broker.url, Spool(tmp_path / "spool", 1 << 20))
    again = CallAudit(publisher, {}, "router-b", 1024, flush_s=0.01, journal=journal)
    await again.start()
    try:
        # Published, or spooled first when the broker's connection was not up yet, then replayed.
        await until(lambda: journal.size == 0 and publisher.events_published == 5, within_s=15)
        stored = await stored_events(broker.url)
    finally:
        await again.stop()
    assert [e.event_id for e in stored] == journaled and len(journaled) == 5
    assert [e.request_id for e in stored[:3]] == ["call-0", "call-1", "call-2"]
    assert {e.router_id for e in stored} == {"router-a"}  # the router that saw the calls
    assert all(e.model == "iris" and e.input_digest and e.peer == "ipv4:127.0.0.1:5" for e in stored)
    assert stored[0].trace_id == "ab" * 16 and stored[0].runtime_id == "runtime-a"
    assert stored[3].status_code == grpc.StatusCode.NOT_FOUND.value[0] and stored[3].output_bytes == 0
    assert stored[4].input_bytes == len(large)
    assert list((tmp_path / "journal").glob("segment-*")) == []
