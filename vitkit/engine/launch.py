"""`vitkit train --nproc N`: the same command under torchrun with N processes on this machine.

torchrun runs in its own session, so a Ctrl-C in the terminal reaches it once, through this process: the workers
get one SIGTERM, save where they are and stop (`vitkit train --resume` continues with any number of processes).
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys

log = logging.getLogger(__name__)


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run `vitkit ARGV` (without --nproc) under torchrun on `nproc` local processes; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "--", "vitkit", *without_nproc(argv)]  # '--': torchrun leaves vitkit's flags (--log) alone
    log.info("launching %d processes: %s", nproc, " ".join(command[1:]))
    child = subprocess.Popen(command, start_new_session=True)

    received: list[int] = []

    def forward(signum, frame):
        log.warning("%s received: asking the %d processes to save and stop", signal.Signals(signum).name, nproc)
        received.append(signum)
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:  # torchrun reports the stopped workers as failed; the run itself was saved (rank 0 said where)
        return 128 + received[0]
    return code
