"""Digests of the tensors of a call, the same whether they came typed or raw.

A tensor's canonical encoding is four length-prefixed parts: its name, its datatype,
its shape (little-endian int64s) and its data as little-endian bytes (BYTES: each
element as a 4-byte little-endian length and its bytes, as in raw contents). Each
length is a little-endian uint64. A tensor's digest is the hex SHA-256 of that
encoding; a side's digest (all inputs, or all outputs) is the hex SHA-256 of its
tensors' digests in name order, one per line.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshserve.errors import MeshError
from meshserve.oip.codec import decode_contents, raw_bytes
from meshserve.oip.datatypes import lookup
from meshserve.protos.inference import grpc_service_pb2 as oip

_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class TensorData:
    """One tensor as the audit trail sees it: its canonical parts and digest."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    digest: str


def canonical_encoding(name: str, datatype: str, shape: Sequence[int], data: bytes) -> bytes:
    parts = (name.encode(), datatype.encode(), struct.pack(f"<{len(shape)}q", *shape), data)
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def tensor_digest(name: str, datatype: str, shape: Sequence[int], data: bytes) -> str:
    """Hex SHA-256 of :func:`canonical_encoding`, without copying ``data`` into it."""
    head = canonical_encoding(name, datatype, shape, b"")[:-_LENGTH.size] + _LENGTH.pack(len(data))
    digest = hashlib.sha256(head)
    digest.update(data)
    return digest.hexdigest()


def side_digest(tensors: Sequence[TensorData]) -> str:
    """Digest of all the tensors of one side of a call ("" when there are none)."""
    if not tensors:
        return ""
    lines = "".join(t.digest + "\n" for t in sorted(tensors, key=lambda t: t.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _le_bytes(datatype: str, shape: Sequence[int], contents: oip.InferTensorContents, what: str) -> bytes:
    dt = lookup(datatype)
    return raw_bytes(decode_contents(dt, shape, contents, what), dt)


def _tensors(tensors: Sequence[Any], raws: Sequence[bytes], side: str) -> list[TensorData]:
    """Input or output tensors (both have name, datatype, shape and contents) with their data."""
    out = []
    for i, tensor in enumerate(tensors):
        shape = tuple(tensor.shape)
        if raws:
            data = raws[i] if i < len(raws) else b""
        else:
            try:
                data = _le_bytes(tensor.datatype, shape, tensor.contents, f"{side} {tensor.name!r}")
            except (MeshError, ValueError, OverflowError):
                data = tensor.contents.SerializeToString()  # malformed: digest what was sent
        out.append(TensorData(tensor.name, tensor.datatype, shape, data,
                              tensor_digest(tensor.name, tensor.datatype, shape, data)))
    return out


def request_tensors(request: oip.ModelInferRequest) -> list[TensorData]:
    return _tensors(request.inputs, request.raw_input_contents, "input")


def response_tensors(response: oip.ModelInferResponse) -> list[TensorData]:
    return _tensors(response.outputs, response.raw_output_contents, "output")
