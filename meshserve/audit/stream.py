"""The JetStream stream that carries call events from routers to the audit service."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

STREAM = "MESHSERVE_AUDIT"
# One CallEvent per message (any producer may publish here).
SUBJECT = "meshserve.audit.v1.calls"
# One CallEventBatch per message (what routers publish).
BATCH_SUBJECT = "meshserve.audit.v1.batches"
# The stream holds, and the audit service reads, both.
SUBJECTS = "meshserve.audit.v1.>"
# JetStream drops a message whose Nats-Msg-Id it saw within this window: a router that
# replays its spool after an ack was lost cannot store an event twice.
DUPLICATE_WINDOW_S = 600.0
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


async def ensure_stream(js: JetStreamContext, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
    """Create the audit stream if it does not exist (routers and the audit service both call this)."""
    try:
        info = await js.stream_info(STREAM)
        if info.config.subjects != [SUBJECTS]:
            info.config.subjects = [SUBJECTS]
            await js.update_stream(info.config)
        return
    except NotFoundError:
        pass
    config = api.StreamConfig(
        name=STREAM, subjects=[SUBJECTS], storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
        max_age=max_age_s, duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.add_stream(config)
        log.info("created JetStream stream %s", STREAM)
    except Exception:  # noqa: BLE001 - another process may have created it meanwhile
        await js.stream_info(STREAM)
