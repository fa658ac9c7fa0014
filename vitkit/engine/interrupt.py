"""SIGINT and SIGTERM during training: finish the current step, save a resumable state, then stop.

The first signal only sets a flag that the trainer reads at every step boundary; a second one stops at once (the
files on disk are then those of the last save, which every write keeps whole). A repeat within `REPEAT_WINDOW`
seconds counts as the same request: under torchrun a Ctrl-C reaches each worker from the terminal and again
from torchrun.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from ..errors import Interrupted  # noqa: F401  (raised by the trainer when a StopRequest was set)

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_WINDOW = 2.0


class StopRequest:
    """A context in which SIGINT/SIGTERM ask the trainer to stop at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._at = 0.0

    def __enter__(self) -> "StopRequest":
        self.signum = None
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if time.monotonic() - self._at < REPEAT_WINDOW:
                return
            self.__exit__()
            raise KeyboardInterrupt
        self.signum, self._at = signum, time.monotonic()
        log.warning("%s received: saving at the end of this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __bool__(self) -> bool:
        return self.signum is not None
