"""Server side of the codec: request inputs to numpy, numpy outputs to a response.

Raw contents are little-endian; numeric raw tensors are decoded with ``np.frombuffer``
without a copy (the arrays are read-only views of the request). BYTES tensors become
numpy object arrays of ``bytes``; in raw contents each element is a 4-byte
little-endian length followed by that many bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from meshserve.errors import InvalidArgument
from meshserve.oip.datatypes import DATATYPES, DataType, datatype_of
from meshserve.protos.inference import grpc_service_pb2 as pb

INT64_MAX = 2**63 - 1
_MAX_EXTENT = INT64_MAX // 8  # numpy bounds size * itemsize; 8 bytes is the widest item here
_LEN = struct.Struct("<I")
_BYTES = DATATYPES["BYTES"]


def element_count(shape: Sequence[int], what: str) -> int:
    """Number of elements of ``shape``; InvalidArgument on a negative dim or overflow.

    A zero dimension makes the count zero, yet numpy still refuses a shape whose other
    dimensions multiply past its byte limit, so those are bounded as well.
    """
    count = 1
    extent = 1  # product of the non-zero dimensions
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{what} has a negative dimension in shape {list(shape)}")
        count *= dim
        extent *= max(dim, 1)
        if extent > _MAX_EXTENT:
            raise InvalidArgument(f"{what} has shape {list(shape)} whose element count overflows int64")
    return count


def decode_bytes_raw(raw: bytes, count: int, what: str) -> np.ndarray:
    """Decode length-prefixed BYTES raw contents into a 1-D object array of ``count``."""
    if count * 4 > len(raw):  # before allocating: a declared shape must not cost memory the bytes lack
        raise InvalidArgument(
            f"{what}: malformed BYTES raw contents: {count} elements need at least {count * 4} bytes of "
            f"lengths, but only {len(raw)} bytes came"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidArgument(
                f"{what}: malformed BYTES raw contents: element {i} of {count} has no 4-byte length "
                f"(only {end - pos} bytes left)"
            )
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > end:
            raise InvalidArgument(
                f"{what}: malformed BYTES raw contents: element {i} claims {size} bytes "
                f"but only {end - pos} remain"
            )
        out[i] = bytes(view[pos:pos + size])
        pos += size
    if pos != end:
        raise InvalidArgument(
            f"{what}: malformed BYTES raw contents: {end - pos} bytes left over after {count} elements"
        )
    return out


def encode_bytes_raw(array: np.ndarray) -> bytes:
    """Length-prefixed raw contents of a BYTES tensor (str elements are UTF-8 encoded)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = as_bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def as_bytes(item: Any) -> bytes:
    """One BYTES element as bytes (str is UTF-8 encoded)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    return str(item).encode()


def decode_raw(dt: DataType, shape: Sequence[int], raw: bytes, what: str) -> np.ndarray:
    """One tensor from raw little-endian contents, checked against its shape."""
    count = element_count(shape, what)
    if dt is _BYTES:
        return decode_bytes_raw(raw, count, what).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{what}: raw contents hold {len(raw)} bytes but shape {list(shape)} of {dt.name} "
            f"needs {count} x {dt.itemsize} = {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dt.dtype).reshape(shape)


def decode_contents(dt: DataType, shape: Sequence[int], contents: pb.InferTensorContents,
                    what: str) -> np.ndarray:
    """One tensor from typed contents, checked against its datatype and shape."""
    count = element_count(shape, what)
    fields = contents.ListFields()
    for descriptor, _ in fields:
        if descriptor.name != dt.field:
            if descriptor.name == "bytes_contents":
                raise InvalidArgument(
                    f"{what} is {dt.name} but carries bytes_contents: send numbers, not BYTES"
                )
            if dt.field is None:
                raise InvalidArgument(
                    f"{what} is {dt.name}, which has no typed contents: send it in raw_input_contents"
                )
            raise InvalidArgument(
                f"{what} is {dt.name} but carries {descriptor.name}; put its values in {dt.field}"
            )
    values: Sequence[Any] = getattr(contents, dt.field) if dt.field else ()
    if len(values) != count:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} needs {count} elements but {dt.field or 'contents'} "
            f"holds {len(values)}"
        )
    if dt is _BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    return np.array(values, dtype=dt.dtype).reshape(shape)


def decode_tensor(name: str, datatype: str, shape: Sequence[int], *,
                  contents: pb.InferTensorContents | None = None, raw: bytes | None = None,
                  kind: str = "input") -> np.ndarray:
    """Decode one tensor from either its typed ``contents`` or its ``raw`` bytes."""
    what = f"{kind} {name!r}"
    dt = _lookup_for(what, datatype)
    if raw is not None:
        if contents is not None and contents.ListFields():
            raise InvalidArgument(
                f"{what} has both typed contents and raw contents; send one or the other"
            )
        return decode_raw(dt, shape, raw, what)
    return decode_contents(dt, shape, contents or pb.InferTensorContents(), what)


def _lookup_for(what: str, datatype: str) -> DataType:
    dt = DATATYPES.get(datatype)
    if dt is None:
        raise InvalidArgument(f"{what} has unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    return dt


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Every input of a request as numpy arrays, keyed by name."""
    inputs = request.inputs
    raws = request.raw_input_contents
    out: dict[str, np.ndarray] = {}
    if raws:
        if len(raws) != len(inputs):
            raise InvalidArgument(
                f"request has {len(inputs)} inputs but {len(raws)} raw_input_contents entries; "
                "send one raw entry per input, in input order, or use typed contents for all"
            )
        for tensor, raw in zip(inputs, raws, strict=True):
            what = f"input {tensor.name!r}"
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidArgument(
                    f"{what} has both typed contents and raw_input_contents; send one or the other"
                )
            out[tensor.name] = decode_raw(_lookup_for(what, tensor.datatype), tensor.shape, raw, what)
    else:
        for tensor in inputs:
            what = f"input {tensor.name!r}"
            out[tensor.name] = decode_contents(
                _lookup_for(what, tensor.datatype), tensor.shape, tensor.contents, what
            )
    if len(out) != len(inputs):
        raise InvalidArgument("request names the same input more than once")
    return out


def raw_bytes(array: np.ndarray, dt: DataType) -> bytes:
    """Raw little-endian contents of ``array`` as datatype ``dt``."""
    if dt is _BYTES:
        return encode_bytes_raw(array)
    if array.dtype != dt.dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dt.dtype)
    return array.tobytes()


def check_requested(requested: Iterable[str], available: Sequence[str], model: str) -> None:
    """InvalidArgument when a requested output is not one the model produces."""
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidArgument(
            f"model {model!r} has no output {', '.join(map(repr, unknown))}; "
            f"its outputs are {', '.join(available)}"
        )


def encode_response(outputs: Mapping[str, np.ndarray], *, model_name: str, model_version: str = "",
                    request_id: str = "", requested: Sequence[str] = (),
                    datatypes: Mapping[str, str] | None = None) -> pb.ModelInferResponse:
    """A ModelInferResponse carrying ``outputs`` in raw_output_contents.

    Only the ``requested`` outputs are included, in that order (all outputs when empty).
    ``datatypes`` forces an output's datatype; otherwise it follows the array's dtype.
    """
    if requested:
        check_requested(requested, list(outputs), model_name)
        names: Iterable[str] = requested
    else:
        names = outputs
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    tensors = response.outputs
    raws = response.raw_output_contents
    for name in names:
        array = outputs[name]
        forced = datatypes.get(name) if datatypes else None
        dt = DATATYPES[forced] if forced else datatype_of(array)
        tensors.add(name=name, datatype=dt.name, shape=array.shape)
        raws.append(raw_bytes(array, dt))
    return response
