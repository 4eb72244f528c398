"""OIP datatypes: their numpy dtypes and the InferTensorContents field for typed contents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshserve.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class DataType:
    """One OIP datatype.

    ``dtype`` is the little-endian numpy dtype (``object`` for BYTES, whose elements are
    ``bytes``); ``field`` is the InferTensorContents field holding typed contents, or
    None where only raw contents are allowed (FP16).
    """

    name: str
    dtype: np.dtype[np.generic]
    field: str | None

    @property
    def itemsize(self) -> int:
        """Bytes per element in raw contents (0 for BYTES, which is length-prefixed)."""
        return 0 if self.name == "BYTES" else self.dtype.itemsize


def _dt(name: str, dtype: str | type, field: str | None) -> DataType:
    return DataType(name, np.dtype(dtype), field)


DATATYPES: dict[str, DataType] = {
    d.name: d
    for d in (
        _dt("BOOL", "?", "bool_contents"),
        _dt("UINT8", "<u1", "uint_contents"),
        _dt("UINT16", "<u2", "uint_contents"),
        _dt("UINT32", "<u4", "uint_contents"),
        _dt("UINT64", "<u8", "uint64_contents"),
        _dt("INT8", "<i1", "int_contents"),
        _dt("INT16", "<i2", "int_contents"),
        _dt("INT32", "<i4", "int_contents"),
        _dt("INT64", "<i8", "int64_contents"),
        _dt("FP16", "<f2", None),
        _dt("FP32", "<f4", "fp32_contents"),
        _dt("FP64", "<f8", "fp64_contents"),
        _dt("BYTES", object, "bytes_contents"),
    )
}

_BY_DTYPE: dict[np.dtype[np.generic], DataType] = {d.dtype: d for d in DATATYPES.values()}


def lookup(name: str) -> DataType:
    """The datatype called ``name``, or InvalidArgument listing the known ones."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown datatype {name!r}; use one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: np.ndarray) -> DataType:
    """The OIP datatype for a numpy array (str, bytes and object arrays are BYTES)."""
    found = _BY_DTYPE.get(array.dtype)
    if found is not None:
        return found
    if array.dtype.kind in "OSU":
        return DATATYPES["BYTES"]
    byteswapped = _BY_DTYPE.get(array.dtype.newbyteorder("<"))
    if byteswapped is not None:
        return byteswapped
    raise InvalidArgument(f"numpy dtype {array.dtype} has no OIP datatype; use one of {', '.join(DATATYPES)}")
