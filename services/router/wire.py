"""Reading the routing fields of a serialized request without parsing the rest.

The router forwards requests as the bytes it received. To route, it needs only the
model name and version, which every request it routes keeps in string fields: 1 and 2
in ModelInferRequest, ModelMetadataRequest, ModelReadyRequest and ModelConfigRequest,
2 (name only) in RepositoryModelLoadRequest and RepositoryModelUnloadRequest; and, to
check it, a ModelInferRequest's id (field 3). This scan
walks the top-level fields, skipping the tensors by their length prefixes, and checks the
wire format on the way, so bytes that are not a protobuf message are refused here.
"""

from __future__ import annotations

from meshserve.errors import InvalidArgument

_NOT_PROTOBUF = "request is not a valid protobuf message"


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise InvalidArgument(f"{_NOT_PROTOBUF}: truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_field(number: int, value: str) -> bytes:
    """One encoded string field; appended to a message it overrides that field (last one wins)."""
    data = value.encode()
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(data)) + data


def string_fields(data: bytes, first: int, second: int = 0) -> tuple[str, str]:
    """Values of string fields ``first`` and ``second`` ("" when absent; last one wins)."""
    values = _strings(data, first, second, 0)
    return values[0], values[1]


def request_fields(data: bytes, name: int, version: int, request_id: int,
                   message: str = "request") -> tuple[str, str, str]:
    """Model name, version and request id of a ``message``, from the fields numbered so (0: none)."""
    values = _strings(data, name, version, request_id, message)
    return values[0], values[1], values[2]


def _strings(data: bytes, first: int, second: int, third: int, message: str = "request") -> list[str]:
    """Values of string fields ``first``, ``second`` and ``third`` (0: not wanted); checks the wire format."""
    wanted = (first, second, third)
    values = ["", "", ""]
    i, end = 0, len(data)
    while i < end:
        key = data[i]
        if key & 0x80:
            key, i = _varint(data, i)
        else:
            i += 1
        wire_type, field = key & 7, key >> 3
        if field == 0:
            raise InvalidArgument(f"{_NOT_PROTOBUF}: field number 0")
        if wire_type == 2:
            length = data[i] if i < end else 0x80
            if length & 0x80:
                length, i = _varint(data, i)
            else:
                i += 1
            if i + length > end:
                raise InvalidArgument(f"{_NOT_PROTOBUF}: field {field} runs past the end")
            if field in wanted:
                try:
                    values[wanted.index(field)] = data[i:i + length].decode()
                except UnicodeDecodeError as e:
                    raise InvalidArgument(f"field {field} of the {message} is not valid UTF-8") from e
            i += length
        elif field in wanted:
            raise InvalidArgument(f"{_NOT_PROTOBUF}: field {field} should hold a string")
        elif wire_type == 0:
            _, i = _varint(data, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:
            raise InvalidArgument(f"{_NOT_PROTOBUF}: unsupported wire type {wire_type}")
    if i != end:
        raise InvalidArgument(f"{_NOT_PROTOBUF}: truncated")
    return values
