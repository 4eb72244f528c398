"""The runtime's record and placements in a real etcd follow its models' states."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from meshserve.local.etcd import EtcdServer
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg
from meshserve.registry import keys
from meshserve.registry.etcd import connect
from meshserve.runtimes.python.server import PythonRuntime

Eventually = Callable[[Callable[[], Awaitable[bool]]], Awaitable[None]]


async def placements(etcd: EtcdServer, runtime_id: str) -> dict[tuple[str, str], reg.Placement]:
    client = await connect(etcd.endpoint)
    try:
        found = {}
        for kv in await client.get_prefix(keys.PLACEMENTS.encode()):
            parsed = keys.parse_placement_key(kv.key)
            if parsed and parsed[2] == runtime_id:
                found[(parsed[0], parsed[1])] = reg.Placement.FromString(kv.value)
        return found
    finally:
        await client.close()


async def runtime_record(etcd: EtcdServer, runtime_id: str) -> reg.Runtime | None:
    client = await connect(etcd.endpoint)
    try:
        value = await client.get(keys.runtime_key(runtime_id))
        return reg.Runtime.FromString(value.value) if value else None
    finally:
        await client.close()


async def test_records_follow_model_states(runtime: PythonRuntime, etcd: EtcdServer,
                                           eventually: Eventually) -> None:
    record = await runtime_record(etcd, runtime.runtime_id)
    assert record is not None and record.kind == "python" and record.address == runtime.address

    found = await placements(etcd, runtime.runtime_id)
    assert found[("iris", "1")].state == reg.MODEL_STATE_READY
    assert found[("iris", "1")].platform == "sklearn" and found[("iris", "1")].address == runtime.address
    assert found[("onnx_iris", "1")].platform == "onnxruntime"
    assert found[("untrusted", "1")].state == reg.MODEL_STATE_AVAILABLE

    async with grpc.aio.insecure_channel(runtime.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="untrusted"))
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="doubler"))

    found = await placements(etcd, runtime.runtime_id)
    assert found[("untrusted", "1")].state == reg.MODEL_STATE_FAILED
    assert "_operator.neg" in found[("untrusted", "1")].reason
    assert found[("doubler", "1")].state == reg.MODEL_STATE_AVAILABLE

    await runtime.stop(0.5)

    async def gone() -> bool:
        return not await placements(etcd, runtime.runtime_id) and not await runtime_record(etcd, runtime.runtime_id)
    await eventually(gone)
