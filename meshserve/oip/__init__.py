"""The Open Inference Protocol tensor codec shared by runtimes, the router and audit.

- :mod:`meshserve.oip.datatypes`: OIP datatypes, their numpy dtypes and typed-contents fields.
- :mod:`meshserve.oip.codec`: server side, request inputs to numpy and numpy to a response.
- :mod:`meshserve.oip.client`: client side, numpy to a request and a response to numpy.
"""

from meshserve.oip.client import build_request, decode_response, encode_tensor
from meshserve.oip.codec import decode_inputs, decode_tensor, encode_response
from meshserve.oip.datatypes import DATATYPES, DataType, datatype_of, lookup

__all__ = [
    "DATATYPES",
    "DataType",
    "build_request",
    "datatype_of",
    "decode_inputs",
    "decode_response",
    "decode_tensor",
    "encode_response",
    "encode_tensor",
    "lookup",
]
