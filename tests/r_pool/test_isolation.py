"""R errors, crashes and runaway code fail only their own request; the pool keeps serving."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from meshserve.errors import DeadlineExceeded, Internal, ResourceExhausted
from meshserve.runtimes.r.pool import RWorkerPool
from meshserve.runtimes.r.protocol import RModelSpec

from .helpers import MTCARS_OUT, assert_eventually, mtcars_inputs, script_model

pytestmark = [
    pytest.mark.r,
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not found: install Debian's r-base-core"),
]

X = {"x": np.array([1.0, 2.0])}
Y = [("y", "FP64")]


async def assert_pool_serves(pool: RWorkerPool, examples: Path) -> None:
    spec = RModelSpec(str(examples / "mtcars" / "1" / "model.rds"))
    results = await asyncio.gather(*(pool.predict("mtcars", spec, mtcars_inputs(2), MTCARS_OUT) for _ in range(4)))
    assert all(r.outputs["mpg"].shape == (2,) for r in results)


async def test_r_error_fails_only_its_request(pool: RWorkerPool, tmp_path: Path, examples: Path) -> None:
    spec = script_model(tmp_path, "boom", 'stop("the model is out of coffee")')
    pids = pool.pids
    with pytest.raises(Internal, match=r"^R: predict\(\) failed: the model is out of coffee$"):
        await pool.predict("boom", spec, X, Y)
    await assert_pool_serves(pool, examples)
    assert pool.pids == pids  # an R error is not a crash: no worker was replaced


async def test_load_error_carries_r_message(pool: RWorkerPool, tmp_path: Path) -> None:
    spec = script_model(tmp_path, "noload", "data$x", load_body='stop("artifact is corrupt")')
    with pytest.raises(Internal, match=r"R: cannot load model 'noload' from .*: artifact is corrupt"):
        await pool.predict("noload", spec, X, Y)
    with pytest.raises(Internal, match="no such file"):
        await pool.predict("missing", RModelSpec(str(tmp_path / "nothing.rds")), X, Y)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("quit(status = 3)", "exited with status 3"),
        ("tools::pskill(Sys.getpid(), 11)", r"was killed by signal 11 \(SIGSEGV\)"),
    ],
)
async def test_crash_fails_only_its_request_and_worker_is_replaced(
    pool: RWorkerPool, tmp_path: Path, examples: Path, body: str, what: str
) -> None:
    spec = script_model(tmp_path, "crash", body)
    before = set(pool.pids)
    with pytest.raises(Internal, match=f"R: the R worker \\(pid \\d+\\) serving model 'crash' {what}"):
        await pool.predict("crash", spec, X, Y)
    await assert_pool_serves(pool, examples)

    def replaced() -> None:
        assert len(pool.pids) == 2 and set(pool.pids) != before

    await assert_eventually(replaced)


async def test_runaway_recursion_fails_only_its_request(pool: RWorkerPool, tmp_path: Path, examples: Path) -> None:
    spec = script_model(tmp_path, "recurse", "f <- function(n) f(n + 1)\nf(0)")
    with pytest.raises(Internal, match=r"R: .*(nested too deeply|stack)"):
        await pool.predict("recurse", spec, X, Y)
    await assert_pool_serves(pool, examples)


async def test_timeout_kills_and_replaces_the_worker(tmp_path: Path, examples: Path) -> None:
    pool = RWorkerPool(1, timeout_s=0.5)
    await pool.start()
    try:
        (pid,) = pool.pids
        spec = script_model(tmp_path, "slow", "Sys.sleep(60); data$x")
        with pytest.raises(DeadlineExceeded, match=rf"0.5 s timeout; its R worker \(pid {pid}\) was killed"):
            await pool.predict("slow", spec, X, Y)
        await assert_pool_serves(pool, examples)
        assert pool.pids != [pid]
    finally:
        await pool.close()


async def test_full_queue_is_resource_exhausted(tmp_path: Path) -> None:
    pool = RWorkerPool(1, queue_max=2)
    await pool.start()
    try:
        spec = script_model(tmp_path, "nap", "Sys.sleep(0.3); data$x")
        running = [asyncio.create_task(pool.predict("nap", spec, X, Y)) for _ in range(3)]
        await asyncio.sleep(0)
        assert pool.waiting == 2
        with pytest.raises(ResourceExhausted, match="2 requests are waiting for 1 workers"):
            await pool.predict("nap", spec, X, Y)
        for result in await asyncio.gather(*running):
            assert result.outputs["y"].tolist() == [1.0, 2.0]
    finally:
        await pool.close()


async def test_round_robin_across_models(tmp_path: Path) -> None:
    pool = RWorkerPool(1)
    await pool.start()
    try:
        hot = script_model(tmp_path, "hot", "Sys.sleep(0.1); data$x")
        cold = script_model(tmp_path, "cold", "data$x")
        done: list[str] = []

        async def call(key: str, spec: RModelSpec) -> None:
            await pool.predict(key, spec, X, Y)
            done.append(key)

        tasks = [asyncio.create_task(call("hot", hot)) for _ in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(call("cold", cold)))
        await asyncio.gather(*tasks)
        assert done.index("cold") <= 2  # behind at most the running and one queued hot request
    finally:
        await pool.close()
