"""Request ids: what the router, pipelines and the audit service accept, and what the trail keeps of the rest."""

from __future__ import annotations

import uuid

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.errors import InvalidArgument
from meshserve.names import MAX_REQUEST_ID_LENGTH, check_request_id, is_request_id
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.services.audit.query import parse_request
from meshserve.services.router.audit import Call, CallAudit, journal_record
from meshserve.services.router.forward import check_request_ids
from meshserve.services.router.wire import request_fields

FORGED = "x\n2026-12-02 INJECTED"
VISIBLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


@pytest.mark.parametrize("value", ["", "a", str(uuid.uuid4()), "req-1_2.3:4/5@x#y", "x" * MAX_REQUEST_ID_LENGTH,
                                   VISIBLE_ASCII[:MAX_REQUEST_ID_LENGTH], "[bold]not-markup[/]"])
def test_visible_ascii_ids_are_accepted(value: str) -> None:
    assert is_request_id(value)
    assert check_request_id(value) == value


@pytest.mark.parametrize("value", [
    FORGED, "a b", "tab\there", "cr\r", "nul\0", "del\x7f", "esc\x1b[31m", "iris\u202egnp.exe", "\u2066isolate",
    "zero\u200bwidth", "modèle", "x" * (MAX_REQUEST_ID_LENGTH + 1), "\u00a0",
])
def test_other_ids_are_refused_saying_what_is_allowed(value: str) -> None:
    assert not is_request_id(value)
    with pytest.raises(InvalidArgument) as refused:
        check_request_id(value)
    message = refused.value.message
    assert f"at most {MAX_REQUEST_ID_LENGTH} visible ASCII characters" in message
    assert message.isprintable(), message  # the refused id is quoted escaped, never raw


@given(st.text(max_size=200))
def test_any_text_is_an_id_or_refused(value: str) -> None:
    if is_request_id(value):
        assert len(value) <= MAX_REQUEST_ID_LENGTH and set(value) <= set(VISIBLE_ASCII)
    else:
        with pytest.raises(InvalidArgument):
            check_request_id(value)


def test_the_router_reads_the_id_with_the_routing_fields() -> None:
    data = oip.ModelInferRequest(model_name="iris", model_version="2", id=FORGED).SerializeToString()
    assert request_fields(data, 1, 2, 3) == ("iris", "2", FORGED)
    assert request_fields(data, 1, 2, 0) == ("iris", "2", "")


def test_the_router_checks_the_field_and_the_header() -> None:
    check_request_ids("abc", (("x-request-id", "def"), ("other", "a b")))
    with pytest.raises(InvalidArgument, match="invalid request id"):
        check_request_ids(FORGED, ())
    with pytest.raises(InvalidArgument, match="invalid x-request-id header"):
        check_request_ids("", (("x-request-id", "a b"),))


def test_the_audit_service_refuses_a_bad_request_id_filter() -> None:
    assert parse_request(audit_pb2.QueryRequest(request_id="abc"))[0].request_id == "abc"
    with pytest.raises(InvalidArgument, match="invalid request_id filter"):
        parse_request(audit_pb2.QueryRequest(request_id=FORGED))


def _event(request: oip.ModelInferRequest, metadata: tuple[tuple[str, str], ...] = ()) -> audit_pb2.CallEvent:
    call = Call("ModelInfer")
    call.model = request.model_name
    audit = CallAudit(None, {}, "router-1", 1024)
    record = journal_record(call, grpc.StatusCode.INVALID_ARGUMENT, "refused", "peer", metadata, "router-1")
    return audit.build(record, request.SerializeToString(), b"")


def test_an_event_never_keeps_a_refused_id() -> None:
    kept = _event(oip.ModelInferRequest(model_name="iris", id="good-1"))
    assert kept.request_id == "good-1"
    for event in (_event(oip.ModelInferRequest(model_name="iris", id=FORGED)),
                  _event(oip.ModelInferRequest(model_name="iris"), (("x-request-id", "a b"),))):
        assert event.request_id == event.event_id  # the event's own id stands in
        assert event.model == "iris"
