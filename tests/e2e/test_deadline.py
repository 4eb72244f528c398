"""Deadlines and cancellation travel from the caller through the router to the runtime."""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from meshserve.oip import build_request, decode_response

from .helpers import IRIS_ROWS, assert_eventually, infer, model_infer, rpc_error


def test_slow_model_gets_deadline_exceeded_in_time(any_router: grpc.Channel) -> None:
    # `sleepy` blocks for 2 s; the caller allows 0.3 s.
    request = build_request("sleepy", {"x": np.ones(3, np.float32)})
    start = time.monotonic()
    error = rpc_error(lambda: model_infer(any_router, request, timeout=0.3))
    elapsed = time.monotonic() - start
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert elapsed < 0.6, f"DEADLINE_EXCEEDED came after {elapsed:.2f} s"
    # The router is not held up by the abandoned call.
    assert infer(any_router, "iris", IRIS_ROWS, timeout=2)["label"].shape == (len(IRIS_ROWS),)


def test_runtime_abandons_work_when_the_callers_deadline_passes(any_router: grpc.Channel,
                                                                napper_markers: Path) -> None:
    # `napper` awaits 5 s and leaves a marker when cancelled: the runtime's handler must be
    # cancelled soon after the caller's 0.3 s deadline, not run on to the end.
    tag = random.randrange(1_000_000)
    request = build_request("napper", {"x": np.array([tag], np.float32)})
    start = time.monotonic()
    error = rpc_error(lambda: model_infer(any_router, request, timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert (napper_markers / f"started-{tag}").exists()

    def cancelled() -> None:
        assert (napper_markers / f"cancelled-{tag}").exists()
    assert_eventually(cancelled, timeout=2.0)
    assert time.monotonic() - start < 1.5


@pytest.mark.slow
def test_deadline_long_enough_succeeds(any_router: grpc.Channel) -> None:
    request = build_request("sleepy", {"x": np.arange(3, dtype=np.float32)})
    outputs = decode_response(model_infer(any_router, request, timeout=10))
    np.testing.assert_array_equal(outputs["y"], np.arange(3, dtype=np.float32))
