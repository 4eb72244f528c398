"""Property-based tests over what a caller controls: request bytes, tensors, names, headers, pipeline files.

Whatever comes in, the code under test answers with a value or with the one error type
meant for callers (a MeshError with a bounded message), never with another exception.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshserve.auth.access import Access
from meshserve.auth.limits import check_request
from meshserve.errors import MAX_MESSAGE_CHARS, InvalidArgument, MeshError, Unauthenticated
from meshserve.names import check_model_name, check_version
from meshserve.oip.codec import decode_inputs
from meshserve.oip.datatypes import DATATYPES
from meshserve.pipelines import parse
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.services.router.wire import string_field, string_fields

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(min_value=-3, max_value=2**63 - 1) | st.integers(min_value=0, max_value=6)


def bounded_error(error: MeshError) -> None:
    assert len(error.message) <= MAX_MESSAGE_CHARS + 40


@SETTINGS
@given(st.binary(max_size=512))
def test_any_bytes_give_names_or_invalid_argument(data: bytes) -> None:
    try:
        name, version = string_fields(data, 1, 2)
    except InvalidArgument as e:
        bounded_error(e)
    else:
        assert isinstance(name, str) and isinstance(version, str)


@SETTINGS
@given(st.text(max_size=300), st.text(max_size=300))
def test_names_read_back_from_real_messages(name: str, version: str) -> None:
    data = oip.ModelInferRequest(model_name=name, model_version=version, id="x").SerializeToString()
    assert string_fields(data, 1, 2) == (name, version)
    assert string_fields(data + string_field(2, "7"), 1, 2) == (name, "7")  # the last one wins


@SETTINGS
@given(st.text(max_size=300))
def test_names_are_valid_or_refused(name: str) -> None:
    for check in (check_model_name, check_version):
        try:
            checked = check(name)
        except InvalidArgument as e:
            bounded_error(e)
        else:
            assert checked == name and "/" not in name and "\0" not in name and ".." not in name


@st.composite
def tensors(draw: st.DrawFn) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    for i in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(dims, max_size=4))
        datatype = draw(st.sampled_from([*DATATYPES, "FLOAT", ""]))
        request.inputs.add(name=f"t{i}", datatype=datatype, shape=shape)
        if draw(st.booleans()):
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            request.inputs[-1].contents.int_contents.extend(draw(st.lists(st.integers(-5, 5), max_size=8)))
    return request


@SETTINGS
@given(tensors())
def test_tensor_decoding_gives_arrays_or_invalid_argument(request: oip.ModelInferRequest) -> None:
    try:
        arrays = decode_inputs(request)
    except InvalidArgument as e:
        bounded_error(e)
    else:
        for tensor in request.inputs:
            assert arrays[tensor.name].shape == tuple(tensor.shape)


@SETTINGS
@given(tensors(), st.binary(max_size=64))
def test_model_limits_never_crash(request: oip.ModelInferRequest, junk: bytes) -> None:
    limits = auth_pb2.ModelLimits(model="m", max_request_bytes=256, max_elements=1000, max_batch=4)
    for data in (request.SerializeToString(), junk):
        try:
            check_request(limits, data)
        except MeshError as e:
            bounded_error(e)


ACCESS = Access({}, {}, lambda: 0)


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=64))
def test_any_authorization_header_is_a_principal_or_unauthenticated(header: str | bytes) -> None:
    try:
        principal = ACCESS.authenticate((("authorization", header),))
    except Unauthenticated as e:
        bounded_error(e)
    else:
        raise AssertionError(f"no key exists, yet {header!r} authenticated as {principal}")


@SETTINGS
@given(st.text(max_size=400))
def test_any_pipeline_text_parses_or_is_refused(text: str) -> None:
    try:
        parse(text)
    except InvalidArgument as e:
        bounded_error(e)


def test_the_property_strategies_reach_valid_inputs_too() -> None:
    request = oip.ModelInferRequest(model_name="m")
    request.inputs.add(name="t", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    assert decode_inputs(request)["t"].tolist() == np.array([1, 2]).tolist()
