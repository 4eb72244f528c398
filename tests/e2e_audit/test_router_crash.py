"""Issue 14, item 3: a router killed under load loses no event of a call it answered.

Each call is in the router's journal before its answer leaves; the router is killed with
SIGKILL while about a second's events wait in memory for their batch (``--audit-flush-s
1``: the default 50 ms batch would leave only one or two to lose), started again on the
same data folder and port, and publishes what its journal holds.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from e2e.helpers import assert_eventually

from .conftest import AuditMesh
from .helpers import Load, counts, meshserve_cli, query, wait_for

pytestmark = pytest.mark.slow

RATE = 60  # calls a second


def test_router_killed_under_load_loses_no_answered_call(audit_mesh: AuditMesh) -> None:
    data_dir = audit_mesh.folder / f"router-crash-{uuid.uuid4().hex[:6]}"
    flags = ("--audit-flush-s", "1")
    proc, address = audit_mesh.start_router(data_dir, *flags)
    port = address.rsplit(":", 1)[1]
    since = time.time_ns()
    restarted = None
    try:
        with Load(address, f"crash-{data_dir.name}", rate=RATE) as load:
            load.wait_calls(2 * RATE)  # two seconds of calls
            proc.kill(signal.SIGKILL)
            assert proc.proc is not None
            proc.proc.wait(10)
            before = set(load.answered)
            restarted, _ = audit_mesh.start_router(data_dir, *flags, "--port", port)  # the same folder and port
            answered_again = len(load.answered)
            wait_for(lambda: len(load.answered) >= answered_again + RATE, 30, "calls answered after the restart")
        answered = load.answered
        assert len(before) >= 2 * RATE - 10, len(before)  # the calls before the kill were answered

        def all_there() -> None:
            stored = counts(query(audit_mesh.audit_address, since_unix_nanos=since))
            missing = answered - set(stored)
            assert not missing, f"{len(missing)} of {len(answered)} answered calls not in the trail: " \
                                f"{sorted(missing)[:5]}"
            assert not {k: v for k, v in stored.items() if v > 1}, "stored more than once"
            assert set(stored) <= load.ids, sorted(set(stored) - load.ids)[:5]
        assert_eventually(all_there, timeout=30, interval=0.5)
    finally:
        proc.stop()
        if restarted is not None:
            restarted.stop()
    assert list((data_dir / "audit-journal").glob("segment-*")) == []  # a clean stop leaves the journal empty
    cli = meshserve_cli("audit", "verify", "--audit", audit_mesh.audit_address)
    assert cli.returncode == 0, cli.stdout + cli.stderr
