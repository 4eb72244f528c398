"""Helpers for the balancing and failover tests: the models, a bounded threaded load, registry checks."""

from __future__ import annotations

import itertools
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np

from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc as reg_grpc

# Answers the PID of the runtime that ran it, for every x; with ``delay_s`` it first waits
# that long, leaving started-<x[0]> in ``marker_dir`` (when given) as it begins.
WHOAMI = textwrap.dedent('''
    import asyncio
    import os
    import pathlib

    import numpy as np

    from meshserve.runtimes.python import Model


    class Whoami(Model):
        """y: the PID of the runtime process, once per x."""

        async def predict(self, inputs):
            delay_s = float(self.parameters.get("delay_s", 0))
            if delay_s:
                if "marker_dir" in self.parameters:
                    tag = int(inputs["x"][0])
                    (pathlib.Path(self.parameters["marker_dir"]) / f"started-{tag}").touch()
                await asyncio.sleep(delay_s)
            return {"y": np.full(len(inputs["x"]), os.getpid(), dtype=np.float32)}
''')


def whoami(channel: grpc.Channel, model: str = "whoami", tag: int = 0, timeout: float = 5.0) -> int:
    """The PID of the runtime that served one call of ``model`` (a Whoami)."""
    request = build_request(model, {"x": np.array([tag], dtype=np.float32)})
    response = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
    return int(decode_response(response)["y"][0])


def listed_runtimes(channel: grpc.Channel) -> set[str]:
    """Runtime ids a router lists (its registry cache)."""
    response = reg_grpc.RegistryServiceStub(channel).ListRuntimes(reg.ListRuntimesRequest(), timeout=5)
    return {r.runtime.id for r in response.runtimes}


@dataclass(frozen=True)
class Outcome:
    """One call of the load: when it ended, through which router, who served it or why it failed."""

    at: float
    router: int
    model: str
    pid: int = 0
    error: str = ""


class Load:
    """``threads`` callers, each calling through ``channels`` in turn, until stopped or ``max_s`` passed.

    Every fourth call of a caller is ``iris`` (its labels must equal ``iris_labels``); the
    others are ``whoami``, whose answer says which replica served it.
    """

    def __init__(self, channels: Sequence[grpc.Channel], iris_rows: np.ndarray, iris_labels: np.ndarray, *,
                 threads: int = 4, max_s: float = 15.0, timeout: float = 5.0) -> None:
        self.channels = list(channels)
        self.iris_request = build_request("iris", {"features": iris_rows})
        self.iris_labels = iris_labels
        self.max_s = max_s
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, args=(i,), daemon=True) for i in range(threads)]

    def _caller(self, index: int) -> None:
        stop_at = time.monotonic() + self.max_s
        routers = itertools.cycle(range(len(self.channels)))
        for n in itertools.count(index):
            if self._stop.is_set() or time.monotonic() > stop_at:
                return
            router = next(routers)
            channel = self.channels[router]
            model = "iris" if n % 4 == 3 else "whoami"
            pid, error = 0, ""
            try:
                if model == "whoami":
                    pid = whoami(channel, timeout=self.timeout)
                else:
                    response = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        self.iris_request, timeout=self.timeout)
                    labels = decode_response(response)["label"]
                    if not np.array_equal(labels, self.iris_labels):
                        error = f"iris answered {labels}"
            except grpc.RpcError as e:
                error = f"{e.code().name}: {e.details()}"
            self.outcomes.append(Outcome(time.monotonic(), router, model, pid, error))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def served(self, since: float = 0.0, until: float = float("inf"), router: int | None = None) -> dict[int, int]:
        """Successful whoami calls per serving PID, ended between ``since`` and ``until`` (through ``router``)."""
        counts: dict[int, int] = {}
        for o in self.outcomes:
            if o.model == "whoami" and not o.error and since < o.at < until and router in (None, o.router):
                counts[o.pid] = counts.get(o.pid, 0) + 1
        return counts
