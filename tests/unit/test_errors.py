"""Internal errors answer an error id (the details go to the log once), size refusals name both sizes."""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc
import pytest

from meshserve.errors import InvalidArgument, ResourceExhausted, as_mesh_error, grpc_errors, internal_error, too_large
from meshserve.ratelog import RateLimitedLog
from meshserve.services.router.forward import size_details

ID = r"[0-9a-f]{8}"


def raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as e:  # the test wants it with its traceback
        return e


def test_an_internal_error_names_only_where_and_an_id(caplog: pytest.LogCaptureFixture) -> None:
    error = raised(ZeroDivisionError("the secret denominator"))
    with caplog.at_level(logging.ERROR):
        internal = internal_error(error, "the python runtime")
    assert internal.code == grpc.StatusCode.INTERNAL
    found = re.fullmatch(rf"internal error in the python runtime \(error id ({ID})\); its log has the details",
                         internal.message)
    assert found, internal.message
    [record] = caplog.records
    assert found.group(1) in record.getMessage() and "ZeroDivisionError: the secret denominator" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is error  # the traceback, once


def test_each_internal_error_gets_its_own_id() -> None:
    ids = {internal_error(raised(KeyError("k")), "the router").message for _ in range(50)}
    assert len(ids) == 50


def test_a_mesh_error_stays_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    error = InvalidArgument("input 'x' holds NaN")
    assert as_mesh_error(error, "the router") is error
    assert not caplog.records


def test_an_unbounded_exception_text_stays_bounded_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        internal_error(raised(ValueError("x" * 100_000)), "the router")
    assert len(caplog.records[0].getMessage()) < 1200


def test_too_large_names_both_sizes() -> None:
    error = too_large("the answer of model 'iris'", 71_234_567, 67_108_864, "this runtime sends")
    assert isinstance(error, ResourceExhausted)
    assert error.message.startswith("the answer of model 'iris' is 71,234,567 bytes; this runtime sends at most "
                                    "67,108,864 (max_message_bytes): send fewer rows per call")


@pytest.mark.parametrize(("details", "expected"), [
    ("Stream removed (CLIENT: Received message larger than max (1179667 vs. 1048576))",
     "the answer of model 'iris' from python-1 is 1,179,667 bytes; this router takes at most 1,048,576"),
    ("CLIENT: Sent message larger than max (2000000 vs. 1048576)",
     "the request is 2,000,000 bytes; this router sends at most 1,048,576"),
    ("SERVER: Received message larger than max (2000000 vs. 1048576)",
     "the request is 2,000,000 bytes; python-1 takes at most 1,048,576"),
    ("SERVER: Sent message larger than max (75000071 vs. 67108864)",
     "the answer of model 'iris' is 75,000,071 bytes; python-1 sends at most 67,108,864"),
    ("the answer of model 'iris' version '1' is 75,000,071 bytes; this runtime sends at most 67,108,864",
     "the answer of model 'iris' version '1' is 75,000,071 bytes; this runtime sends at most 67,108,864"),
    ("rate limit of principal 'app' reached", "rate limit of principal 'app' reached"),
])
def test_grpc_size_refusals_in_meshserve_words(details: str, expected: str) -> None:
    assert size_details(details, "the answer of model 'iris'", "python-1").startswith(expected)


class Servicer:
    component = "the audit service"

    @grpc_errors
    async def Crash(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("the secret state of the store")

    @grpc_errors
    async def Refuse(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise InvalidArgument("bad page token")


async def test_grpc_errors_answers_internal_with_an_id(caplog: pytest.LogCaptureFixture) -> None:
    servicer = Servicer()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in ("Crash", "Refuse")})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as crash:
                await channel.unary_unary("/t.S/Crash")(b"", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refuse:
                await channel.unary_unary("/t.S/Refuse")(b"", timeout=5)
    finally:
        await server.stop(None)
    assert crash.value.code() == grpc.StatusCode.INTERNAL
    found = re.fullmatch(rf"internal error in the audit service \(error id ({ID})\); its log has the details",
                         crash.value.details() or "")
    assert found, crash.value.details()
    assert [r for r in caplog.records if found.group(1) in r.getMessage() and r.exc_info]
    assert (refuse.value.code(), refuse.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad page token")


def test_rate_limited_log_writes_a_burst_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.ratelog")
    log = RateLimitedLog(logger, per_s=1e-9, burst=3)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for i in range(10):
            log("refused call %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused call 0", "refused call 1", "refused call 2"]
        assert log.left_out == 7
        log._tokens = 1.0  # time passes
        log("refused call %d", 10)
    assert caplog.records[-1].getMessage() == "refused call 10 (7 similar lines left out)"
    assert log.left_out == 0
