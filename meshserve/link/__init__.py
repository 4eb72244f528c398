"""The mesh link: a lean, multiplexed framed transport from routers to runtimes.

Callers outside the mesh always speak the Open Inference Protocol over gRPC. Between a
router and a runtime that offers a link, ModelInfer travels instead as one frame each
way on a long-lived connection: the request bytes exactly as the caller sent them, with
the deadline, metadata and cancellation carried in the frame header. A unary gRPC call
costs a Python router about half a millisecond of CPU on each side; a frame costs a
small fraction of that. Runtimes without a link (Triton) are called over gRPC.
"""

from meshserve.link.client import LinkClient
from meshserve.link.frames import MODEL_INFER
from meshserve.link.server import LinkHandler, LinkServer, serve_link

__all__ = ["MODEL_INFER", "LinkClient", "LinkHandler", "LinkServer", "serve_link"]
