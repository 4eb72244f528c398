"""The CLI's tables and input parsing, without any server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from meshserve.cli.common import UserError
from meshserve.cli.inputs import parse_input_flags, parse_json_inputs, shape_inputs
from meshserve.cli.tables import models_table, outputs_table, runtimes_table
from meshserve.cli.up import grpcurl_command
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg


def render(table: Table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def rows(table: Table) -> list[list[str]]:
    cells = [list(map(str, c._cells)) for c in table.columns]
    return [list(r) for r in zip(*cells, strict=True)]


def placement(model: str, version: str, runtime: str, state: int = reg.MODEL_STATE_READY) -> reg.Placement:
    return reg.Placement(model=model, version=version, runtime_id=runtime, runtime_kind="python", state=state)


def test_models_table_groups_versions_and_counts_ready_replicas() -> None:
    table = models_table([
        placement("iris", "2", "a"), placement("iris", "10", "a"), placement("iris", "2", "b"),
        placement("zeta", "1", "a", reg.MODEL_STATE_FAILED), placement("alpha", "1", "b"),
    ])
    assert rows(table) == [
        ["alpha", "1", "python", "1", "ready", "-"],
        ["iris", "2, 10", "python", "2", "ready x3", "-"],
        ["zeta", "1", "python", "0", "failed", "-"],
    ]
    assert "iris" in render(table)


def test_models_table_shows_why_a_load_failed() -> None:
    failed = placement("broken", "1", "triton-1", reg.MODEL_STATE_FAILED)
    failed.reason = "failed to load 'broken' version 1: Internal: RuntimeError: no weights\n\nAt: model.py(4)"
    assert rows(models_table([failed]))[0][-2:] == [
        "failed", "failed to load 'broken' version 1: Internal: RuntimeError: no weights"
    ]


def test_models_table_empty() -> None:
    assert rows(models_table([])) == []


def test_runtimes_table() -> None:
    entry = reg.ListRuntimesResponse.Entry(
        runtime=reg.Runtime(id="py-1", kind="python", address="127.0.0.1:5000", version="0.1.0",
                            started_at_unix_ms=1_000_000),
        ready_models=3,
    )
    assert rows(runtimes_table([entry], now_s=1_090)) == [
        ["py-1", "python", "127.0.0.1:5000", "3", "0.1.0", "90s"]
    ]


def test_outputs_table() -> None:
    text = render(outputs_table(
        {"label": np.array([0, 2]), "name": np.array([b"setosa"], dtype=object)},
        {"label": "INT64", "name": "BYTES"},
    ))
    assert "INT64" in text and "[0, 2]" in text and "setosa" in text


IRIS_META = pb.ModelMetadataResponse(
    name="iris", inputs=[pb.ModelMetadataResponse.TensorMetadata(name="features", datatype="FP32", shape=[-1, 4])]
)


def test_inputs_are_typed_and_batched_from_metadata() -> None:
    arrays = shape_inputs(parse_input_flags(["features=[5.1, 3.5, 1.4, 0.2]"]), IRIS_META)
    assert arrays["features"].dtype == np.float32
    assert arrays["features"].shape == (1, 4)
    arrays = shape_inputs(parse_json_inputs('{"features": [[1, 2, 3, 4], [5, 6, 7, 8]]}'), IRIS_META)
    assert arrays["features"].shape == (2, 4)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"petals": [1]}, "has no input petals; inputs: features"),
        ({}, "missing input features"),
        ({"features": [["a", "b", "c", "d"]]}, "expected FP32 values"),
    ],
)
def test_bad_inputs_name_the_problem(values: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        shape_inputs(values, IRIS_META)


def test_bad_flags() -> None:
    with pytest.raises(UserError, match="NAME=JSON"):
        parse_input_flags(["features"])
    with pytest.raises(UserError, match="not JSON"):
        parse_input_flags(["features=[1,"])
    with pytest.raises(UserError, match="expected an object"):
        parse_json_inputs("[1, 2]")


def test_json_from_file(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text('{"features": [[1, 2, 3, 4]]}')
    assert parse_json_inputs(f"@{path}") == {"features": [[1, 2, 3, 4]]}
    with pytest.raises(UserError, match="cannot read"):
        parse_json_inputs(f"@{path}.missing")


def test_grpcurl_command_is_one_shell_line() -> None:
    command = grpcurl_command("127.0.0.1:8001")
    assert "\n" not in command
    assert command.endswith("127.0.0.1:8001 inference.GRPCInferenceService/ModelInfer")
    assert "fp32_contents" in command


def test_models_table_lists_pipelines_after_the_models() -> None:
    pipeline = reg.Pipeline(name="sentiment", steps=[reg.PipelineStep(name="f", model="text-features"),
                                                     reg.PipelineStep(name="s", model="sentiment-glm")])
    assert rows(models_table([placement("iris", "1", "a")], [pipeline]))[-1] == [
        "sentiment", "-", "pipeline", "-", "pipeline", "steps: f=text-features, s=sentiment-glm"]
