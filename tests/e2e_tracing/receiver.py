"""An OTLP collector in the test process: spans exported to it are kept in memory.

The mesh's services run as processes of their own, so an in-memory exporter cannot see
their spans; this receiver is the in-memory exporter's other end. It answers OTLP/gRPC
(meshserve's services) and OTLP/HTTP with protobuf or JSON bodies (Triton sends JSON), both on
127.0.0.1 ports picked by the system.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {trace_pb2.Span.SPAN_KIND_SERVER: "server", trace_pb2.Span.SPAN_KIND_CLIENT: "client",
         trace_pb2.Span.SPAN_KIND_INTERNAL: "internal"}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class SpanReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Both receivers and the spans they got (:meth:`spans`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_address = ""
        self.http_url = ""

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    failed = span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
                    received.append(ReceivedSpan(
                        service=str(resource.get("service.name", "")), name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                        kind=KINDS.get(span.kind, str(span.kind)),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        error=(span.status.message or "error") if failed else ""))
        with self._lock:
            self._spans += received

    def spans(self, trace_id: str = "") -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if not trace_id or s.trace_id == trace_id]

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc, self.grpc_address = server, f"127.0.0.1:{port}"
        http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        threading.Thread(target=http.serve_forever, name="otlp-http", daemon=True).start()
        self._http, self.http_url = http, f"http://127.0.0.1:{http.server_address[1]}/v1/traces"

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def _http_handler(receiver: SpanReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            as_json = "json" in self.headers.get("content-type", "")
            receiver.add(_from_json(body) if as_json else trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            answer = trace_service_pb2.ExportTraceServiceResponse()
            data = b"{}" if as_json else answer.SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/json" if as_json else "application/x-protobuf")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _from_json(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """OTLP/JSON (Triton's exporter sends it): like protobuf's JSON mapping, but ids are hex, not base64."""
    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(data, trace_service_pb2.ExportTraceServiceRequest(), ignore_unknown_fields=True)


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> Iterator[ReceivedSpan]:
    return (s for s in spans if s.parent_id == parent.span_id)
