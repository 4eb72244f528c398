"""Triton's model states as registry states."""

from __future__ import annotations

from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.runtimes.triton.registrar import placement_state


def test_ready_loading_unloading_map_directly() -> None:
    assert placement_state("READY", "") == (pb.MODEL_STATE_READY, "")
    assert placement_state("LOADING", "") == (pb.MODEL_STATE_LOADING, "")
    assert placement_state("UNLOADING", "") == (pb.MODEL_STATE_UNLOADING, "")


def test_unloaded_or_never_loaded_is_available() -> None:
    assert placement_state("UNAVAILABLE", "unloaded") == (pb.MODEL_STATE_AVAILABLE, "")
    assert placement_state("", "") == (pb.MODEL_STATE_AVAILABLE, "")


def test_a_failed_load_keeps_tritons_reason() -> None:
    reason = "failed to load 'broken' version 1: Internal: RuntimeError: no weights"
    assert placement_state("UNAVAILABLE", reason) == (pb.MODEL_STATE_FAILED, reason)
