"""Tests 3 to 6: the trail survives NATS, router and audit-service failures; strict models refuse calls
whose event cannot be kept."""

from __future__ import annotations

import signal
import statistics
import time
import uuid

import grpc
import numpy as np
import pytest
from e2e.helpers import IRIS_ROWS, assert_eventually

from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .conftest import AuditMesh
from .helpers import Load, all_stored_once, query, request, spooled_events, stub, wait_for, write_policy

pytestmark = pytest.mark.slow


def spool_count(mesh: AuditMesh, data_dir: object = None) -> int:
    return len(spooled_events((data_dir or mesh.router_data_dir) / "audit-spool"))  # type: ignore[operator]


def test_nats_outage_mid_load(audit_mesh: AuditMesh) -> None:
    since = time.time_ns()
    with Load(audit_mesh.router_address, f"nats-{uuid.uuid4().hex[:6]}") as load:
        load.wait_calls(40)
        outage = time.monotonic()
        audit_mesh.nats.stop()
        first = wait_for(lambda: spool_count(audit_mesh), 10, "spooling events")
        load.wait_calls(40)
        # The spool grows while the broker is away (a batch waits at most its ack timeout first).
        wait_for(lambda: spool_count(audit_mesh) > first, 10, "the spool growing")
        back = time.monotonic()
        audit_mesh.nats.start()  # the same port and store
        load.wait_calls(40)
    assert not load.errors(), load.errors()[:3]
    normal, during = load.latencies(until=outage), load.latencies(outage, back)
    assert len(normal) >= 40 and len(during) >= 40
    # Inference never waits on the broker: no slower than usual while it is down.
    assert statistics.median(during) <= 2 * statistics.median(normal) + 0.01, (normal, during)
    assert max(during) <= max(0.5, 3 * max(normal)), (normal, during)
    all_stored_once(audit_mesh.audit_address, load.ids, since)
    wait_for(lambda: spool_count(audit_mesh) == 0, 10, "the spool emptied")


def test_router_killed_with_a_spool(audit_mesh: AuditMesh) -> None:
    data_dir = audit_mesh.folder / f"router-killed-{uuid.uuid4().hex[:6]}"
    proc, address = audit_mesh.start_router(data_dir)
    try:
        since = time.time_ns()
        audit_mesh.nats.stop()
        sent = set()
        with grpc.insecure_channel(address) as channel:
            for i in range(30):
                req = request("iris", [("features", "FP32", IRIS_ROWS[i % 4:i % 4 + 1])], raw=True,
                              request_id=f"killed-{data_dir.name}-{i}")
                stub(channel).ModelInfer(req, timeout=10)
                sent.add(req.id)
        wait_for(lambda: {e.request_id for e in spooled_events(data_dir / "audit-spool")} >= sent, 15,
                 "every event spooled")
        proc.kill(signal.SIGKILL)
        assert proc.proc is not None
        proc.proc.wait(10)
    finally:
        proc.stop()
    audit_mesh.nats.start()
    proc, _ = audit_mesh.start_router(data_dir)  # a new router on the same data directory
    try:
        all_stored_once(audit_mesh.audit_address, sent, since)
        wait_for(lambda: not spooled_events(data_dir / "audit-spool"), 10, "the spool emptied")
    finally:
        proc.stop()


def test_audit_service_killed_mid_load(audit_mesh: AuditMesh) -> None:
    since = time.time_ns()
    with Load(audit_mesh.router_address, f"audit-{uuid.uuid4().hex[:6]}") as load:
        load.wait_calls(40)
        assert audit_mesh.audit is not None
        audit_mesh.audit.kill(signal.SIGKILL)
        assert audit_mesh.audit.proc is not None
        audit_mesh.audit.proc.wait(10)
        load.wait_calls(40)
        audit_mesh.start_audit()  # the same database
        load.wait_calls(40)
    assert not load.errors(), load.errors()[:3]
    all_stored_once(audit_mesh.audit_address, load.ids, since)


def test_strict_model_refused_when_its_event_cannot_be_kept(audit_mesh: AuditMesh) -> None:
    write_policy(audit_mesh.etcd_endpoint, "vault", audit_pb2.AuditPolicy(strict=True))
    data_dir = audit_mesh.folder / f"router-strict-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    vault = [("secret", "FP32", [1.0]), ("public", "INT32", [2]), ("note", "BYTES", [b"x"])]
    since = time.time_ns()
    audit_mesh.nats.stop()
    proc, address = audit_mesh.start_router(data_dir, "--audit-spool-max-bytes", "1")
    try:
        with grpc.insecure_channel(address) as channel:
            infer = stub(channel).ModelInfer
            try:
                infer(request("vault", vault, raw=True, request_id=f"{tag}-refused"), timeout=10)
                raise AssertionError("a strict model's call succeeded with no way to keep its event")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                message = e.details() or ""
                assert "vault" in message and "audit" in message and "spool is full" in message, message
                assert audit_mesh.nats.url.removeprefix("nats://") in message, message
            [streamed] = stub(channel).ModelStreamInfer(
                iter([request("vault", vault, raw=True, request_id=f"{tag}-refused-stream")]), timeout=10)
            assert "durable audit trail" in streamed.error_message, streamed
            # A model without the strict policy is served as usual.
            infer(request("iris", [("features", "FP32", IRIS_ROWS[:1])], raw=True, request_id=f"{tag}-lax"),
                  timeout=10)

            audit_mesh.nats.start()
            served = []

            def strict_call_served() -> None:
                req = request("vault", vault, raw=True, request_id=f"{tag}-strict-{len(served)}")
                served.append(req.id)
                infer(req, timeout=10)
            assert_eventually(strict_call_served, timeout=15, interval=0.2, retry_on=(grpc.RpcError,))
            for i in range(3):
                infer(request("vault", vault, raw=False, request_id=f"{tag}-strict-ok-{i}"), timeout=10)
        wanted = {served[-1], *(f"{tag}-strict-ok-{i}" for i in range(3))}

        def stored() -> None:  # acknowledged by JetStream before the answer; stored by the service soon after
            ids = {r.event.request_id for r in query(audit_mesh.audit_address, model="vault", since_unix_nanos=since)}
            assert wanted <= ids, ids
        assert_eventually(stored, timeout=15, interval=0.2)
    finally:
        proc.stop()
        write_policy(audit_mesh.etcd_endpoint, "vault", None)


def test_strict_model_served_while_the_spool_has_room(audit_mesh: AuditMesh, router: grpc.Channel) -> None:
    """Strict calls with the broker down but room in the spool: served, and their events arrive later."""
    write_policy(audit_mesh.etcd_endpoint, "vault", audit_pb2.AuditPolicy(strict=True))
    vault = [("secret", "FP32", [1.0]), ("public", "INT32", [2]), ("note", "BYTES", [b"x"])]
    since = time.time_ns()
    try:
        time.sleep(1.0)  # routers apply a policy within a second (nothing a caller sees tells when)
        audit_mesh.nats.stop()
        sent = set()
        for i in range(3):
            req = request("vault", vault, raw=True, request_id=f"durable-{uuid.uuid4().hex[:6]}-{i}")
            stub(router).ModelInfer(req, timeout=10)
            sent.add(req.id)
        audit_mesh.nats.start()
        all_stored_once(audit_mesh.audit_address, sent, since)
    finally:
        write_policy(audit_mesh.etcd_endpoint, "vault", None)



def test_strict_event_too_big_for_the_spool(audit_mesh: AuditMesh) -> None:
    """A strict model's event that the spool cannot take refuses the call, unary or streamed alike.

    The spool has room for the router's up-front check (64 KiB) but not for this event: the
    policy captures a 240 KB input.
    """
    write_policy(audit_mesh.etcd_endpoint, "vault",
                 audit_pb2.AuditPolicy(strict=True, capture_payloads=True, max_payload_bytes=1 << 20))
    data_dir = audit_mesh.folder / f"router-big-{uuid.uuid4().hex[:6]}"
    big = [("secret", "FP32", np.ones(60_000, dtype=np.float32)), ("public", "INT32", [2]), ("note", "BYTES", [b"x"])]
    tag = uuid.uuid4().hex[:6]
    since = time.time_ns()
    audit_mesh.nats.stop()
    proc, address = audit_mesh.start_router(data_dir, "--audit-spool-max-bytes", "150000")
    try:
        with grpc.insecure_channel(address) as channel:
            try:
                stub(channel).ModelInfer(request("vault", big, raw=True, request_id=f"{tag}-unary"), timeout=10)
                raise AssertionError("a strict call succeeded though its event could not be kept")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                assert "could not be durably queued" in (e.details() or ""), e
            [streamed] = stub(channel).ModelStreamInfer(
                iter([request("vault", big, raw=True, request_id=f"{tag}-stream")]), timeout=10)
        audit_mesh.nats.start()
        if not streamed.error_message:  # served: then its event must not be lost

            def stored() -> None:
                ids = {r.event.request_id for r in query(audit_mesh.audit_address, since_unix_nanos=since)}
                assert f"{tag}-stream" in ids, (
                    "a strict streamed request was answered and its event lost: the spool could not take it")
            assert_eventually(stored, timeout=5, interval=0.2)
        assert "could not be durably queued" in streamed.error_message, streamed.error_message
    finally:
        proc.stop()
        write_policy(audit_mesh.etcd_endpoint, "vault", None)
