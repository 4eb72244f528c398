"""Real Rscript workers, the example R models built into a temporary repository, and R's own answers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshserve.runtimes.r.pool import RWorkerPool

ROOT = Path(__file__).resolve().parents[2]
RSCRIPT = shutil.which("Rscript")


def run_r(code: str, cwd: Path) -> None:
    """Run R code with Rscript; fail the test with R's stderr when it fails."""
    assert RSCRIPT is not None
    done = subprocess.run([RSCRIPT, "-e", code], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build_r_examples.R built into a fresh folder (skips when randomForest is missing)."""
    if RSCRIPT is None:
        pytest.skip("Rscript not found: install Debian's r-base-core")
    out = tmp_path_factory.mktemp("r-models")
    done = subprocess.run(
        [RSCRIPT, str(ROOT / "scripts" / "build_r_examples.R"), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    if "there is no package called" in done.stderr:
        pytest.skip(f"an R package is missing (install Debian's r-cran-randomforest): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def r_expected(tmp_path: Path) -> Callable[[str], Path]:
    """Run R code in a scratch folder and return that folder (the code writes its answers there)."""

    def run(code: str) -> Path:
        run_r(code, tmp_path)
        return tmp_path

    return run


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[RWorkerPool]:
    pool = RWorkerPool(2, timeout_s=10.0, log_path=tmp_path / "r-workers.log")
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()
