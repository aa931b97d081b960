"""Rate-limited logging for messages that peers (or a full fd table) can repeat without end.

A flood of bad peers produces the same "closing connection" line thousands of
times a second; written to stderr that costs the loop its time, and on a pipe
nobody reads it can block the loop outright. Each *reason* -- a short key the
caller picks from a fixed set, never text a peer controls -- gets at most
``LOG_REPEAT_LIMIT`` lines per ``LOG_REPEAT_INTERVAL`` seconds. The line that
reaches the limit says that more are being suppressed; the first line of the
next interval says how many were.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .configuration import config

_PRUNE_AT = 256  # reasons remembered before expired windows are dropped


class RateLimitedLog:
    """Logs through ``logger``, at most LOG_REPEAT_LIMIT lines per reason per interval."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._windows: dict[str, list] = {}  # reason -> [start, lines written, lines suppressed]
        self._lock = threading.Lock()  # the loop and worker threads both log

    def log(self, level: int, reason: str, msg: str, *args: Any) -> None:
        """``logger.log(level, msg, *args)`` unless ``reason`` has used up its lines."""
        limit = config.LOG_REPEAT_LIMIT
        if limit <= 0:  # 0: unlimited
            self._logger.log(level, msg, *args)
            return
        interval = config.LOG_REPEAT_INTERVAL
        now = self._clock()
        with self._lock:
            window = self._windows.get(reason)
            suppressed, elapsed = 0, 0.0
            if window is None or now - window[0] >= interval:
                if window is None and len(self._windows) >= _PRUNE_AT:
                    self._windows = {k: w for k, w in self._windows.items() if now - w[0] < interval}
                if window is not None:
                    suppressed, elapsed = window[2], now - window[0]
                window = self._windows[reason] = [now, 0, 0]
            if window[1] >= limit:
                window[2] += 1
                return
            window[1] += 1
            at_limit = window[1] == limit
        if suppressed:
            self._logger.log(level, "... suppressed %d similar messages (%s) in the last %.1f s",
                             suppressed, reason, elapsed)
        self._logger.log(level, msg, *args)
        if at_limit:
            self._logger.log(level, "... more messages like this (%s) are suppressed for %g s "
                                    "(LOG_REPEAT_LIMIT, LOG_REPEAT_INTERVAL)", reason, interval)
