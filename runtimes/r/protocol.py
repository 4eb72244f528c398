"""The binary framing between the pool and its R workers (the R side is ``R/worker.R``).

Everything is little-endian: numbers are raw IEEE/two's-complement values, so doubles
arrive bit for bit. A message is a ``u32`` length and then its body.

Requests (Python -> R)::

    PING     u32 op=1, u32 0
    PREDICT  u32 op=2, u32 header length, header, then each input named in the header, in
             order, as a tensor: u32 code, u32 ndim, ndim x u32 dims, u32 data length,
             data (BYTES: n x u32 lengths, then the bytes of every element back to back)

The header is UTF-8 text, one tab-separated line per field::

    key <model key>        path <.rds file or .R script>     frame data.frame|matrix
    type <predict type>    packages <pkg> <pkg> ...
    input <tensor name> <R column> <code>            (one line per input)
    output <name> <R column or element> <code>       (one line per output; the code of
                                                      the declared datatype)

It is the same for every call to one model with the same inputs, so a worker parses it
once and keeps what it learnt (including the checks of column names and types).

Responses (R -> Python), where a str is a u32 byte length and UTF-8 bytes::

    u8 status: 0 OK, 1 R_ERROR, 2 BAD_INPUT
    not OK   str message
    PING OK  str "pid=<pid> <R version>"
    PREDICT  f64 nanoseconds spent in predict(), u32 n, n x (str name, u8 code,
             u32 ndim, ndim x u32 dims, u32 data length, data)

Type codes: 1 BOOL (u8), 2 INT32, 3 INT64, 4 FP32, 5 FP64, 6 BYTES. R has no 64-bit
integer, so INT64/UINT32/UINT64 inputs travel as INT32 when they fit and as FP64 when
that is exact; R answers numeric as FP64, integer as INT32, logical as BOOL, and factor or
character as BYTES (a factor gives its codes instead when the output is declared integer).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np

from meshserve.errors import Internal, InvalidArgument
from meshserve.oip.datatypes import datatype_of, lookup

OP_PING = 1
OP_PREDICT = 2

_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_INT32_MIN = -(2**31)  # R's NA_integer_: never sent as a value
_EXACT_DOUBLE = 2**53


class Status(IntEnum):
    OK = 0
    R_ERROR = 1
    BAD_INPUT = 2


class Code(IntEnum):
    BOOL = 1
    INT32 = 2
    INT64 = 3
    FP32 = 4
    FP64 = 5
    BYTES = 6


_WIRE_DTYPE = {Code.INT32: "<i4", Code.INT64: "<i8", Code.FP32: "<f4", Code.FP64: "<f8", Code.BOOL: "?"}


@dataclass(frozen=True, slots=True)
class RModelSpec:
    """How a worker loads one R model and maps tensors to ``predict()``'s data and back.

    ``path`` is an ``.rds`` file (any object with a ``predict()`` method) or an R script
    defining ``load(dir)`` (given the script's folder) and ``predict(model, data)``.
    """

    path: str
    frame: Literal["data.frame", "matrix"] = "data.frame"
    columns: Mapping[str, str] = field(default_factory=dict)
    """Input tensor name -> R column name, where they differ."""
    outputs: Mapping[str, str] = field(default_factory=dict)
    """Output name -> column or element of predict()'s result (default: the whole result
    for a single output, else the column named like the output)."""
    predict_type: str = ""
    """The ``type=`` argument to ``predict()`` for .rds models ("" for none)."""
    packages: Sequence[str] = ()
    """R packages to attach before loading (those named like the model's class load by themselves)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: Status
    message: str = ""
    r_nanos: int = 0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def frame(body: bytes) -> bytes:
    """A message: its length, then the body."""
    return _U32.pack(len(body)) + body


def encode_ping() -> bytes:
    return frame(struct.pack("<II", OP_PING, 0))


def _field(*values: str) -> str:
    for value in values:
        if "\t" in value or "\n" in value:
            raise InvalidArgument(f"R model names, columns and paths cannot hold tabs or newlines: {value!r}")
    return "\t".join(values)


def encode_predict(
    model_key: str,
    spec: RModelSpec,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[tuple[str, str]],
) -> bytes:
    """The framed PREDICT request; InvalidArgument for tensors R cannot take."""
    lines = [
        _field("key", model_key),
        _field("path", spec.path),
        _field("frame", spec.frame),
        _field("type", spec.predict_type),
        _field("packages", *spec.packages),
    ]
    tensors = []
    for name, array in inputs.items():
        code, data = _encode_tensor(name, np.asarray(array))
        lines.append(_field("input", name, spec.columns.get(name, ""), str(code)))
        tensors.append(data)
    for name, datatype in outputs:
        lines.append(_field("output", name, spec.outputs.get(name, ""), str(_output_code(datatype))))
    header = "\n".join(lines).encode()
    return frame(b"".join([struct.pack("<II", OP_PREDICT, len(header)), header, *tensors]))


def _output_code(datatype: str) -> int:
    dt = lookup(datatype)
    if dt.name == "BYTES":
        return Code.BYTES
    if dt.name == "BOOL":
        return Code.BOOL
    return Code.FP64 if dt.dtype.kind == "f" else Code.INT32


def _to_wire(name: str, array: np.ndarray) -> tuple[Code, np.ndarray]:
    """The wire code and array for an input, narrowed to what R can hold exactly."""
    dt = datatype_of(array)
    if dt.name == "BYTES":
        return Code.BYTES, array
    if dt.name == "BOOL":
        return Code.BOOL, array
    if dt.name == "FP64":
        return Code.FP64, array
    if dt.name in ("FP32", "FP16"):
        return Code.FP32, array.astype("<f4", copy=False)
    if array.size == 0 or (array.min() > _INT32_MIN and array.max() < 2**31):
        return Code.INT32, array.astype("<i4", copy=False)
    if array.min() >= -_EXACT_DOUBLE and array.max() <= _EXACT_DOUBLE:
        return Code.FP64, array.astype("<f8")
    raise InvalidArgument(
        f"input {name!r} ({dt.name}) holds values beyond ±2^53, which R (no 64-bit integers) cannot hold exactly"
    )


def _encode_tensor(name: str, array: np.ndarray) -> tuple[int, bytes]:
    code, wire = _to_wire(name, array)
    if code == Code.BYTES:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in wire.ravel()]
        data = np.array([len(b) for b in items], dtype="<u4").tobytes() + b"".join(items)
    else:
        data = np.ascontiguousarray(wire, dtype=_WIRE_DTYPE[code]).tobytes()
    head = struct.pack(f"<{wire.ndim + 3}I", code, wire.ndim, *wire.shape, len(data))
    return code, head + data


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.view = memoryview(body)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.view):
            raise Internal(f"R worker sent a truncated message ({len(self.view)} bytes)")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def f64(self) -> float:
        value: float = _F64.unpack(self.take(8))[0]
        return value

    def str(self) -> str:
        return bytes(self.take(self.u32())).decode(errors="replace")


def decode_ping(body: bytes) -> str:
    """The worker's "pid=<pid> <R version>" line."""
    r = _Reader(body)
    status = r.u8()
    text = r.str()
    if status != Status.OK:
        raise Internal(f"R worker failed its ping: {text}")
    return text


def decode_response(body: bytes) -> Response:
    r = _Reader(body)
    status = Status(r.u8())
    if status != Status.OK:
        return Response(status, message=r.str())
    nanos = int(r.f64())
    outputs: dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.str()
        code = Code(r.u8())
        shape = tuple(r.u32() for _ in range(r.u32()))
        data = r.take(r.u32())
        if code == Code.BYTES:
            items = _Reader(bytes(data))
            values = [bytes(items.take(items.u32())) for _ in range(int(np.prod(shape)))]
            array = np.empty(len(values), dtype=object)
            array[:] = values
            outputs[name] = array.reshape(shape)
        else:
            outputs[name] = np.frombuffer(data, dtype=_WIRE_DTYPE[code]).reshape(shape).copy()
    return Response(status, r_nanos=nanos, outputs=outputs)


def as_datatype(name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    """An output from R as its declared datatype; Internal when R gave another kind."""
    dt = lookup(datatype)
    got = datatype_of(array).name
    if dt.name == "BYTES" or got == "BYTES":
        if dt.name != got:
            raise Internal(f"output {name!r} is declared {dt.name} but the R model returned {got}")
        return array
    if dt.name == "BOOL":
        if got != "BOOL":
            raise Internal(f"output {name!r} is declared BOOL but the R model returned {got}")
        return array
    if dt.dtype.kind in "iu":
        if got == "FP64" and not np.all(np.isfinite(array) & (np.floor(array) == array)):
            raise Internal(f"output {name!r} is declared {dt.name} but the R model returned non-integer numbers")
        info = np.iinfo(dt.dtype)  # type: ignore[type-var]
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise Internal(f"output {name!r} has values outside the range of {dt.name}")
    return array.astype(dt.dtype, copy=False)
