"""Which request each streamed response answers, for plain and decoupled models."""

from __future__ import annotations

from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.services.router.audit import Call
from meshserve.services.router.streams import FINAL_PARAMETER, Awaiting


def request(model: str, request_id: str = "") -> tuple[Call, bytes]:
    call = Call("ModelStreamInfer")
    call.model = model
    return call, oip.ModelInferRequest(model_name=model, id=request_id).SerializeToString()


def response(model: str, request_id: str = "", final: bool | None = None) -> bytes:
    answer = oip.ModelStreamInferResponse()
    answer.infer_response.model_name = model
    answer.infer_response.id = request_id
    if final is not None:
        answer.infer_response.parameters[FINAL_PARAMETER].bool_param = final
    return answer.SerializeToString()


def test_plain_models_answer_in_order() -> None:
    ledger = Awaiting()
    first, second = request("iris"), request("iris")
    ledger.add(*first, decoupled=False)
    ledger.add(*second, decoupled=False)
    assert ledger.match(b"anything").call is first[0]  # type: ignore[union-attr]
    assert ledger.match(b"x").call is second[0]  # type: ignore[union-attr]
    assert not ledger.drain()


def test_decoupled_responses_go_to_their_request_by_id() -> None:
    ledger = Awaiting()
    a, b = request("countdown", "a"), request("countdown", "b")
    ledger.add(*a, decoupled=True)
    ledger.add(*b, decoupled=True)
    matched = [ledger.match(response("countdown", rid)) for rid in ("a", "a", "b", "a")]
    assert [m.call for m in matched if m] == [a[0], a[0], b[0], a[0]]
    assert len(ledger.drain()) == 2  # no final flag: both stay open until the stream ends


def test_final_flag_closes_a_decoupled_request() -> None:
    ledger = Awaiting()
    a = request("countdown", "a")
    ledger.add(*a, decoupled=True)
    entry = ledger.match(response("countdown", "a", final=True))
    assert entry is not None and entry.answers == 1
    assert not ledger.drain()


def test_plain_answer_after_an_open_decoupled_request_goes_by_model() -> None:
    ledger = Awaiting()
    count, plain = request("countdown", "c"), request("simple")
    ledger.add(*count, decoupled=True)
    ledger.add(*plain, decoupled=False)
    assert ledger.match(response("countdown", "c")).call is count[0]  # type: ignore[union-attr]
    assert ledger.match(response("simple")).call is plain[0]  # type: ignore[union-attr]
    assert [p.call for p in ledger.drain()] == [count[0]]
