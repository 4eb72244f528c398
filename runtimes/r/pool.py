"""A pool of long-lived Rscript workers with fair queueing, timeouts and crash replacement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from meshserve.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
)

from . import protocol
from .protocol import RModelSpec, Status
from .worker import RWorker, WorkerDied

log = logging.getLogger(__name__)

_RESPAWN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class PredictResult:
    outputs: dict[str, np.ndarray]
    r_nanos: int
    """Nanoseconds R spent inside ``predict()`` (not loading, not the transport)."""
    worker_pid: int = 0
    """The worker that ran it."""


@dataclass(eq=False, slots=True)
class _Job:
    model_key: str
    request: bytes
    outputs: Sequence[tuple[str, str]]
    timeout_s: float
    future: asyncio.Future[PredictResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class RWorkerPool:
    """Long-lived ``Rscript`` workers serving ``predict()`` over pipes.

    Requests wait in one queue per model and are handed to free workers round-robin
    across models, so a hot model cannot starve the others. A worker that dies fails only
    the request it was running and is replaced; one that runs past ``timeout_s`` is
    killed (SIGKILL, by PID) and replaced. Worker output (``print``, warnings) goes to
    ``log_path``, or to this process's stderr when it is None.
    """

    def __init__(
        self,
        size: int,
        rscript: str = "Rscript",
        queue_max: int = 256,
        timeout_s: float = 30.0,
        log_path: Path | str | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError("an R worker pool needs at least one worker")
        self.size = size
        self.rscript = rscript
        self.queue_max = queue_max
        self.timeout_s = timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.start_timeout_s = start_timeout_s
        self._log_file: IO[bytes] | None = None
        self._workers: set[RWorker] = set()
        self._idle: list[RWorker] = []
        self._queues: dict[str, deque[_Job]] = {}  # insertion order is the round-robin order
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # What close() undoes, the last first: the workers, then the log file.
        self._stack = contextlib.AsyncExitStack()
        self.replaced = 0  # workers lost to a crash or a timeout (the runtime's metrics read it)

    @property
    def waiting(self) -> int:
        """Requests queued for a free worker."""
        return self._waiting

    @property
    def pids(self) -> list[int]:
        """PIDs of the live workers."""
        return sorted(w.pid for w in self._workers)

    async def start(self) -> None:
        """Start every worker in parallel; return once each has answered a ping."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self._stack.enter_context(self.log_path.open("ab"))
        self._stack.push_async_callback(self._stop_workers)
        results = await asyncio.gather(*(self._spawn() for _ in range(self.size)), return_exceptions=True)
        workers = [r for r in results if isinstance(r, RWorker)]
        errors = [r for r in results if not isinstance(r, RWorker)]
        self._workers.update(workers)
        self._idle.extend(workers)
        if errors:
            await self.close()
            raise Unavailable(f"cannot start {len(errors)} of {self.size} R workers: {errors[0]}")
        log.info("R worker pool ready: %d workers (pids %s)", self.size, ", ".join(map(str, self.pids)))

    async def _spawn(self) -> RWorker:
        out: IO[bytes] | int = self._log_file if self._log_file is not None else 2
        try:
            return await RWorker.spawn(self.rscript, out, self.start_timeout_s)
        except FileNotFoundError as e:
            raise WorkerDied(f"cannot run {self.rscript!r}: {e.strerror} (install Debian's r-base-core)") from e

    async def predict(
        self,
        model_key: str,
        spec: RModelSpec,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[tuple[str, str]],
        timeout_s: float | None = None,
    ) -> PredictResult:
        """Run ``predict()`` for ``model_key`` on a free worker.

        ``outputs`` lists (name, OIP datatype) pairs; results come back as those datatypes.
        Raises InvalidArgument (bad input, "R: ..."), Internal (an R error or a worker
        crash), DeadlineExceeded (past ``timeout_s``), ResourceExhausted (queue full) or
        Unavailable (pool closed).
        """
        if self._closed:
            raise Unavailable("the R worker pool is closed")
        if not self._idle and self._waiting >= self.queue_max:
            raise ResourceExhausted(
                f"R worker queue is full: {self._waiting} requests are waiting for "
                f"{self.size} workers (queue_max {self.queue_max})"
            )
        request = protocol.encode_predict(model_key, spec, inputs, outputs)
        job = _Job(model_key, request, outputs, self.timeout_s if timeout_s is None else timeout_s)
        self._queues.setdefault(model_key, deque()).append(job)
        self._waiting += 1
        self._dispatch()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._forget(job)
            raise

    def _forget(self, job: _Job) -> None:
        """Drop a job whose caller gave up, if no worker has taken it yet."""
        queue = self._queues.get(job.model_key)
        if queue is not None and job in queue:
            queue.remove(job)
            self._waiting -= 1
            if not queue:
                del self._queues[job.model_key]
        job.future.cancel()

    def _dispatch(self) -> None:
        while self._idle and self._queues:
            key = next(iter(self._queues))
            queue = self._queues.pop(key)
            job = queue.popleft()
            if queue:
                self._queues[key] = queue  # back of the line: round-robin across models
            self._waiting -= 1
            if job.future.done():
                continue
            self._background(self._run(self._idle.pop(), job))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, worker: RWorker, job: _Job) -> None:
        # A timer rather than asyncio.wait_for: one task per request, not two.
        timer = asyncio.get_running_loop().call_later(job.timeout_s, worker.kill_now)
        try:
            body = await worker.call(job.request)
        except WorkerDied as e:
            if worker.killed:
                self._fail(job, DeadlineExceeded(
                    f"R: predict() for model '{job.model_key}' ran past the {job.timeout_s:g} s timeout; "
                    f"its R worker (pid {worker.pid}) was killed and is being replaced"
                ))
            else:
                self._fail(job, Internal(
                    f"R: the R worker (pid {worker.pid}) serving model '{job.model_key}' {e} during predict(); "
                    "only this request failed and a fresh worker replaces it"
                ))
            await worker.kill()
            self._replace(worker)
            return
        except BaseException:  # the pool is closing (or a bug): never leave the caller waiting
            self._fail(job, Unavailable("the R worker pool closed while this request ran"))
            await worker.kill()
            self._replace(worker)
            raise
        finally:
            timer.cancel()
        self._idle.append(worker)
        self._dispatch()
        try:
            result = self._result(job, body, worker.pid)
        except MeshError as e:
            self._fail(job, e)
        else:
            if not job.future.done():
                job.future.set_result(result)

    @staticmethod
    def _result(job: _Job, body: bytes, worker_pid: int) -> PredictResult:
        response = protocol.decode_response(body)
        if response.status == Status.BAD_INPUT:
            raise InvalidArgument(f"R: {response.message}")
        if response.status != Status.OK:
            raise Internal(f"R: {response.message}")
        missing = [name for name, _ in job.outputs if name not in response.outputs]
        if missing:
            raise Internal(f"R worker returned no output {missing}")
        outputs = {
            name: protocol.as_datatype(name, response.outputs[name], datatype) for name, datatype in job.outputs
        }
        return PredictResult(outputs, response.r_nanos, worker_pid)

    @staticmethod
    def _fail(job: _Job, error: MeshError) -> None:
        if not job.future.done():
            job.future.set_exception(error)

    def _replace(self, dead: RWorker) -> None:
        self._workers.discard(dead)
        if not self._closed:
            self.replaced += 1
            self._background(self._respawn())

    async def _respawn(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                worker = await self._spawn()
            except (WorkerDied, OSError) as e:
                delay = _RESPAWN_BACKOFF_S[min(attempt, len(_RESPAWN_BACKOFF_S) - 1)]
                log.error("cannot replace an R worker (retrying in %.1f s): %s", delay, e)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if self._closed:
                await worker.close()
                return
            log.info("R worker %d replaces a lost one", worker.pid)
            self._workers.add(worker)
            self._idle.append(worker)
            self._dispatch()
            return

    async def close(self) -> None:
        """Fail queued requests, stop every worker (SIGKILL after a grace period), close the log file."""
        self._closed = True
        for queue in self._queues.values():
            for job in queue:
                self._fail(job, Unavailable("the R worker pool closed before this request ran"))
        self._queues.clear()
        self._waiting = 0
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        self._log_file = None

    async def _stop_workers(self) -> None:
        """Stop every worker at once; one that fails to stop is logged, the others still stop."""
        workers = list(self._workers)
        results = await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("stopping R worker %d failed: %s", worker.pid, result)
        self._workers.clear()
        self._idle.clear()
