"""Log lines about what callers sent, rate-limited so a flood of bad calls cannot flood the log."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """Writes at most ``burst`` lines at once and ``per_s`` a second after that, at ``level``.

    Lines over the rate are counted, not written; the next line written says how many
    were left out.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.INFO, *, per_s: float = 10.0,
                 burst: int = 50) -> None:
        self.logger = logger
        self.level = level
        self.per_s = per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.left_out = 0

    def __call__(self, message: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if self._tokens < 1:
            self.left_out += 1
            return
        self._tokens -= 1
        if self.left_out:
            message += " (%d similar lines left out)"
            args = (*args, self.left_out)
            self.left_out = 0
        self.logger.log(self.level, message, *args)
