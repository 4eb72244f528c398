"""Which request of an upstream stream each streamed response answers (for the audit trail).

Most models answer a stream's requests one for one and in order. A decoupled model
(Triton) sends zero or many responses per request; each of those is matched to its
request by the request id Triton echoes (then by model name, then oldest first), and the
request stays open until a response says it is the last (``triton_final_response``, sent
when the caller asked for ``triton_enable_empty_final_response``) or the stream ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from meshserve.protos.inference import grpc_service_pb2 as oip

from .audit import Call
from .wire import string_fields

FINAL_PARAMETER = "triton_final_response"


@dataclass(slots=True, eq=False)
class Pending:
    call: Call
    request: bytes
    decoupled: bool
    request_id: str = ""
    answers: int = 0


class Awaiting:
    """The requests written to one upstream stream that may still get answers."""

    def __init__(self) -> None:
        self._items: deque[Pending] = deque()
        self._decoupled = 0

    def add(self, call: Call, request: bytes, decoupled: bool) -> None:
        request_id = string_fields(request, 3)[0] if decoupled else ""
        self._items.append(Pending(call, request, decoupled, request_id))
        self._decoupled += decoupled

    def match(self, response: bytes) -> Pending | None:
        """The request ``response`` answers; it leaves with its last answer."""
        if not self._items:
            return None
        if not self._decoupled:  # one answer per request, in order
            return self._items.popleft()
        try:
            streamed = oip.ModelStreamInferResponse.FromString(response)
        except DecodeError:
            return self._take(self._items[0])
        answer = streamed.infer_response
        entry = next((p for p in self._items
                      if (not answer.id or p.request_id == answer.id)
                      and (not answer.model_name or p.call.model == answer.model_name)), self._items[0])
        entry.answers += 1
        final = answer.parameters.get(FINAL_PARAMETER)
        if not entry.decoupled or (final is not None and final.bool_param):
            self._take(entry)
        return entry

    def _take(self, entry: Pending) -> Pending:
        self._items.remove(entry)
        self._decoupled -= entry.decoupled
        return entry

    def drain(self) -> list[Pending]:
        """Every request still open, leaving none."""
        items = list(self._items)
        self._items.clear()
        self._decoupled = 0
        return items
