"""``meshserve infer``: call one model through the router and print its outputs."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
import typer
from rich.text import Text

from meshserve.cli.common import (
    RouterOption,
    TimeoutOption,
    UserError,
    channel,
    cli_errors,
    console,
)
from meshserve.cli.inputs import parse_input_flags, parse_json_inputs, shape_inputs
from meshserve.cli.tables import outputs_table
from meshserve.cli.text import printable
from meshserve.oip.client import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"


class Format(StrEnum):
    table = "table"
    json = "json"


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.ravel()]
    return array.tolist()


@cli_errors
def infer(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Option("--version", "-v", help="model version (default: the router's)")] = "",
    request_id: Annotated[str, typer.Option("--request-id", help="the request's id (to find it in the audit)")] = "",
    input_flags: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME=JSON-ARRAY, repeatable: features='[[5.1, 3.5, 1.4, 0.2]]'"),
    ] = None,
    json_inputs: Annotated[
        str | None,
        typer.Option("--json", help='inputs as a JSON object {"features": [[...]]}, or @file.json'),
    ] = None,
    output_format: Annotated[Format, typer.Option("--format", "-f", help="how to print the outputs")] = Format.table,
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Send one inference request; inputs are shaped and typed from the model's metadata."""
    values: dict[str, Any] = {}
    if json_inputs is not None:
        values.update(parse_json_inputs(json_inputs))
    values.update(parse_input_flags(input_flags or []))
    if not values:
        raise UserError("no inputs: give --input NAME=JSON or --json '{\"NAME\": [...]}'")
    with channel(router) as ch:
        model_metadata = ch.unary_unary(
            SERVICE + "ModelMetadata", request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        model_infer = ch.unary_unary(
            SERVICE + "ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        metadata: pb.ModelMetadataResponse = model_metadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
        )
        arrays = shape_inputs(values, metadata)
        request = build_request(model, arrays, model_version=version, request_id=request_id)
        response: pb.ModelInferResponse = model_infer(request, timeout=timeout)
    outputs = decode_response(response)
    datatypes = {o.name: o.datatype for o in response.outputs}
    if output_format is Format.json:
        print(json.dumps({
            "model_name": response.model_name,
            "model_version": response.model_version,
            "outputs": {name: _jsonable(array) for name, array in outputs.items()},
        }))
    else:
        console.print(Text.assemble((printable(response.model_name), "bold"),
                                    f" version {printable(response.model_version) or '-'}"))
        console.print(outputs_table(outputs, datatypes))
