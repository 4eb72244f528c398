"""Client side of the codec: numpy to a ModelInferRequest, a response back to numpy.

Used by the CLI, tests and benchmarks::

    from meshserve.oip import build_request, decode_response
    request = build_request("iris", {"features": np.zeros((2, 4), np.float32)})
    outputs = decode_response(await stub.ModelInfer(request))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from meshserve.errors import InvalidArgument
from meshserve.oip.codec import as_bytes, decode_contents, decode_raw, raw_bytes
from meshserve.oip.datatypes import DATATYPES, DataType, datatype_of
from meshserve.protos.inference import grpc_service_pb2 as pb

_BYTES = DATATYPES["BYTES"]


def encode_tensor(array: Any, datatype: str | None = None) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw little-endian bytes) of one array-like value."""
    arr = np.asarray(array)
    dt = DATATYPES[datatype] if datatype else datatype_of(arr)
    return dt.name, list(arr.shape), raw_bytes(arr, dt)


def _typed(contents: pb.InferTensorContents, array: np.ndarray, dt: DataType) -> None:
    if dt.field is None:
        raise InvalidArgument(f"{dt.name} has no typed contents: build the request with raw=True")
    flat = array.reshape(-1)
    if dt is _BYTES:
        contents.bytes_contents.extend(as_bytes(item) for item in flat)
    else:
        getattr(contents, dt.field).extend(np.asarray(flat, dtype=dt.dtype).tolist())


def build_request(model_name: str, inputs: Mapping[str, Any], *, model_version: str = "",
                  outputs: Sequence[str] = (), raw: bool = True, request_id: str = "",
                  datatypes: Mapping[str, str] | None = None) -> pb.ModelInferRequest:
    """A ModelInferRequest for ``model_name`` carrying ``inputs`` (name -> array-like).

    ``raw=True`` (the default, and what Triton clients send) puts tensors in
    raw_input_contents; ``raw=False`` uses typed InferTensorContents (not possible for
    FP16). ``outputs`` names the outputs wanted (all when empty); ``datatypes`` forces an
    input's datatype instead of deriving it from the array's dtype.
    """
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        forced = datatypes.get(name) if datatypes else None
        dt = DATATYPES[forced] if forced else datatype_of(array)
        tensor = request.inputs.add(name=name, datatype=dt.name, shape=array.shape)
        if raw:
            request.raw_input_contents.append(raw_bytes(array, dt))
        else:
            _typed(tensor.contents, array, dt)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response as numpy arrays, from raw or typed contents."""
    raws = response.raw_output_contents
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        what = f"output {tensor.name!r}"
        dt = DATATYPES.get(tensor.datatype)
        if dt is None:
            raise InvalidArgument(f"{what} has unknown datatype {tensor.datatype!r}")
        if raws:
            if len(raws) != len(response.outputs):
                raise InvalidArgument(
                    f"response has {len(response.outputs)} outputs but {len(raws)} raw_output_contents"
                )
            out[tensor.name] = decode_raw(dt, tensor.shape, raws[i], what)
        else:
            out[tensor.name] = decode_contents(dt, tensor.shape, tensor.contents, what)
    return out
