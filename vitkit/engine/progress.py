"""How far an epoch is: tqdm's bar on a terminal; in logs and CI, where a bar shows nothing until the epoch ends,
one line every `output.progress_every` seconds with the step, loss, accuracy, images per second and the time left."""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from tqdm import tqdm

from ..console import duration

log = logging.getLogger(__name__)

BAR_REFRESH_STEPS = 20  # the bar's loss and accuracy are read (a device sync) every this many steps


class EpochProgress:
    """`bar`: tqdm's bar when stderr is a terminal. `lines`: a log line every `every` seconds otherwise (0: none).
    `stats()` gives (mean loss, accuracy) so far; it is called only when something is shown."""

    def __init__(self, epoch: int, epochs: int, total: int, first: int, bar: bool, lines: bool, every: float,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.epoch, self.epochs, self.total, self.first = epoch, epochs, total, first
        self.every = every if lines and not (bar and terminal) else 0.0
        self.clock = clock
        self.start = self.last_line = clock()
        self.bar = tqdm(total=total, initial=first, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                        disable=not (bar and terminal), dynamic_ncols=True)

    def step(self, step: int, images: int, stats: Callable[[], tuple[float, float]]) -> None:
        """After step `step` (0-based) of the epoch, `images` images since this object was made."""
        now = self.clock()
        rate = images / max(now - self.start, 1e-9)
        if not self.bar.disable:
            if step % BAR_REFRESH_STEPS == 0 or step == self.total - 1:
                loss, acc = stats()
                self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update()
        if self.every and now - self.last_line >= self.every:
            self.last_line = now
            loss, acc = stats()
            done = step + 1 - self.first
            left = (self.total - step - 1) * (now - self.start) / max(done, 1)
            log.info("epoch %d/%d  step %d/%d  loss %.4f acc %.3f  %.0f img/s, %s left in the epoch", self.epoch,
                     self.epochs, step + 1, self.total, loss, acc, rate, duration(left))

    def close(self) -> None:
        self.bar.close()
