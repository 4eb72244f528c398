"""A mesh of real processes for the R tests: etcd, a router and R runtimes on loopback.

No Python runtime takes part: every model here is an R model. The package's R runtime
serves the example models (built by scripts/build_r_examples.R into a temporary
repository) and two more made for the bad-input tests; modules that crash, time out or
kill runtimes start R runtimes of their own on the same etcd and router.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from e2e.helpers import assert_eventually, router_process

from meshserve.local.etcd import EtcdServer

from .helpers import MISSING_R, build_examples, infer, r_runtime_process, run_rscript

# An lm with a factor input: cyl arrives as BYTES labels ("4", "6", "8").
CYL_MODEL = """
args <- commandArgs(trailingOnly = TRUE)
saveRDS(lm(mpg ~ wt + cyl, data = transform(mtcars, cyl = factor(cyl))), args[[1]])
"""


@pytest.fixture(scope="package")
def r_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example R models, plus mtcars-bytes (wt declared BYTES) and mtcars-cyl (a factor input)."""
    if MISSING_R is not None:
        pytest.skip(MISSING_R)
    repository = build_examples(tmp_path_factory.mktemp("r-models"))

    # mtcars whose manifest lets wt through as BYTES: R itself must refuse the column's type.
    shutil.copytree(repository / "mtcars", repository / "mtcars-bytes")
    manifest = repository / "mtcars-bytes" / "1" / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["inputs"][0]["datatype"] = "BYTES"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))

    folder = repository / "mtcars-cyl" / "1"
    folder.mkdir(parents=True)
    run_rscript(CYL_MODEL, str(folder / "model.rds"), folder=tmp_path_factory.mktemp("r-build"))
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "runtime": "r", "framework": "r", "artifact": "model.rds",
        "inputs": [{"name": "wt", "datatype": "FP64", "shape": [-1]},
                   {"name": "cyl", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "mpg", "datatype": "FP64", "shape": [-1]}],
        "r": {"as": "data.frame"},
    }, sort_keys=False))
    return repository


@pytest.fixture(scope="package")
def r_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of the package's own: its models' names cannot meet another package's."""
    folder = tmp_path_factory.mktemp("r-etcd")
    with EtcdServer(folder, folder / "etcd.log") as server:
        yield server


@pytest.fixture(scope="package")
def router(r_etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A channel to a router on the package's etcd."""
    with router_process(r_etcd.endpoint, tmp_path_factory.mktemp("r-router")) as (_, address), \
            grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="package")
def r_runtime(r_repository: Path, r_etcd: EtcdServer, router: grpc.Channel,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The package's R runtime (default settings) serving ``r_repository``; yields its runtime id."""
    with r_runtime_process(r_repository, r_etcd.endpoint, tmp_path_factory.mktemp("r-runtime")) as (_, _, rid):
        one = {"wt": np.array([2.62]), "hp": np.array([110.0])}
        assert_eventually(lambda: infer(router, "mtcars", one), timeout=15, retry_on=(grpc.RpcError,))
        yield rid
