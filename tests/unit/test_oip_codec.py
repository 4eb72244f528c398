"""The OIP tensor codec: round trips for every datatype and each validation error."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from meshserve.errors import InvalidArgument
from meshserve.oip import (
    DATATYPES,
    build_request,
    datatype_of,
    decode_inputs,
    decode_response,
    encode_response,
    encode_tensor,
    lookup,
)
from meshserve.oip.codec import decode_bytes_raw, encode_bytes_raw
from meshserve.protos.inference import grpc_service_pb2 as pb

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    dt = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", b"\x00\xff"], [b"hello", "é".encode(), b"z" * 300]], dtype=object)
    info = np.finfo(dt.dtype) if dt.dtype.kind == "f" else np.iinfo(dt.dtype)
    return np.array([[info.min, 0, 1], [2, info.max, 3]], dtype=dt.dtype)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("raw", [True, False])
def test_round_trip(datatype: str, raw: bool) -> None:
    array = sample(datatype)
    if datatype == "FP16" and not raw:
        with pytest.raises(InvalidArgument, match="raw"):
            build_request("m", {"x": array}, raw=False)
        return
    request = build_request("m", {"x": array}, raw=raw)
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3]
    assert bool(request.raw_input_contents) == raw
    decoded = decode_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))["x"]
    assert decoded.dtype == DATATYPES[datatype].dtype
    assert decoded.shape == (2, 3)
    assert decoded.tolist() == array.tolist()

    response = encode_response({"y": decoded}, model_name="m", model_version="1")
    assert response.outputs[0].datatype == datatype
    back = decode_response(pb.ModelInferResponse.FromString(response.SerializeToString()))["y"]
    assert back.dtype == decoded.dtype and back.tolist() == array.tolist()


def test_raw_numeric_is_zero_copy() -> None:
    request = build_request("m", {"x": np.arange(8, dtype=np.float32)})
    decoded = decode_inputs(request)["x"]
    assert not decoded.flags.writeable  # a view of the request's bytes, not a copy


def test_str_arrays_are_bytes() -> None:
    request = build_request("m", {"s": np.array(["ab", "ç"])})
    assert request.inputs[0].datatype == "BYTES"
    assert decode_inputs(request)["s"].tolist() == [b"ab", "ç".encode()]


def test_bytes_raw_layout() -> None:
    raw = encode_bytes_raw(np.array([b"ab", b"c"], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert decode_bytes_raw(raw, 2, "x").tolist() == [b"ab", b"c"]


def test_encode_tensor_and_lookup() -> None:
    assert encode_tensor(np.array([1, 2], dtype=np.int16)) == ("INT16", [2], b"\x01\x00\x02\x00")
    assert lookup("FP32").dtype == np.float32
    assert datatype_of(np.zeros(1, dtype=">f8")).name == "FP64"
    with pytest.raises(InvalidArgument, match="unknown datatype 'FP8'"):
        lookup("FP8")


def test_requested_outputs_order_and_unknown() -> None:
    outputs = {"a": np.zeros(1, np.float32), "b": np.ones(1, np.int64)}
    response = encode_response(outputs, model_name="m", requested=["b"])
    assert [o.name for o in response.outputs] == ["b"]
    with pytest.raises(InvalidArgument, match=r"no output 'c'.*outputs are a, b"):
        encode_response(outputs, model_name="m", requested=["c"])


def raw_request(datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def typed_request(datatype: str, shape: list[int], **contents: list[object]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (typed_request("FP32", [-1, 2], fp32_contents=[1, 2]), "negative dimension"),
        (typed_request("FP32", [2**40, 2**40]), "overflows int64"),
        (typed_request("BOOL", [0, 1653, 5579777396766350]), "overflows int64"),  # zero elements, yet no array
        (raw_request("FP64", [0, 2**61], b""), "overflows int64"),
        (typed_request("FP32", [3], fp32_contents=[1, 2]), r"needs 3 elements but fp32_contents holds 2"),
        (raw_request("FP32", [3], b"\x00" * 8), r"hold 8 bytes but shape \[3\] of FP32 needs 3 x 4 = 12"),
        (typed_request("FP8", [1]), "unknown datatype 'FP8'"),
        (typed_request("INT32", [1], bytes_contents=[b"1"]), "carries bytes_contents: send numbers"),
        (typed_request("INT32", [1], fp32_contents=[1.0]), "carries fp32_contents; put its values in int_contents"),
        (typed_request("FP16", [1], fp32_contents=[1.0]), "no typed contents: send it in raw_input_contents"),
        (raw_request("BYTES", [2], struct.pack("<I", 3) + b"abc" + b"\x01"), "element 1 of 2 has no 4-byte length"),
        (raw_request("BYTES", [2], struct.pack("<I", 1) + b"a" + b"\x01"), "2 elements need at least 8 bytes"),
        (raw_request("BYTES", [1], struct.pack("<I", 5) + b"ab"), "claims 5 bytes but only 2 remain"),
        (raw_request("BYTES", [1], struct.pack("<I", 1) + b"ab"), "1 bytes left over"),
    ],
)
def test_validation_errors(request_: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        decode_inputs(request_)
    assert "'x'" in err.value.message or "FP8" in err.value.message


def test_raw_count_must_match_inputs() -> None:
    request = build_request("m", {"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    del request.raw_input_contents[1]
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        decode_inputs(request)


def test_typed_and_raw_together() -> None:
    request = build_request("m", {"x": np.zeros(2, np.float32)})
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidArgument, match="both typed contents and raw"):
        decode_inputs(request)


def test_duplicate_input_names() -> None:
    request = build_request("m", {"x": np.zeros(1, np.float32)}, raw=False)
    request.inputs.append(request.inputs[0])
    with pytest.raises(InvalidArgument, match="more than once"):
        decode_inputs(request)
