"""The router's routing-field scan against real protobuf encodings."""

from __future__ import annotations

import numpy as np
import pytest

from meshserve.errors import InvalidArgument
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.services.router.wire import string_fields


def test_reads_name_and_version_past_tensors() -> None:
    request = build_request("iris", {"features": np.ones((1000, 4), np.float32)}, model_version="2")
    assert string_fields(request.SerializeToString(), 1, 2) == ("iris", "2")


def test_missing_version_is_empty() -> None:
    data = oip.ModelMetadataRequest(name="iris").SerializeToString()
    assert string_fields(data, 1, 2) == ("iris", "")


def test_fields_in_any_order_and_unicode() -> None:
    # version first, then name: a valid protobuf encoding the router must still read.
    data = oip.ModelInferRequest(model_version="3").SerializeToString()
    data += oip.ModelInferRequest(model_name="modèle").SerializeToString()
    assert string_fields(data, 1, 2) == ("modèle", "3")


def test_load_request_routes_by_field_two() -> None:
    data = oip.RepositoryModelLoadRequest(model_name="iris").SerializeToString()
    assert string_fields(data, 1, 2) == ("", "iris")


@pytest.mark.parametrize("data", [
    b"\xff\xff\xff",                 # truncated varint key
    b"hello, world",                 # text
    b"\x0a\x10abc",                  # length past the end
    b"\x08\x01",                     # field 1 as a varint, not a string
    b"\x0f",                         # wire type 7
    b"\x00\x01",                     # field number 0
    b"\x0a\x02\xff\xfe",             # name not UTF-8
])
def test_rejects_bytes_that_are_not_a_request(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        string_fields(data, 1, 2)
