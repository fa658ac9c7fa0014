"""The errors vitkit ends with, one family: `VitkitError` carries the exit code, and its message is one sentence
that names the problem and the fix. The CLI prints it on one line; any other exception is a bug (a traceback with
`vitkit -v`).

    VitkitError
      UserError (2)           a mistake in arguments, config, files: fix it and run again
        DataError (2)         data that cannot be used as given
          BadImage (2)        one image file that cannot be decoded (skipped and listed where a dataset is read)
        OutOfMemory (2)       an allocation failed: the message names the option to lower
      NonFiniteLoss (1)       the loss or gradient became NaN/inf; the last completed epoch is saved
      ExportMismatch (1)      an export disagrees with PyTorch beyond the tolerance (a bug to report)
      Interrupted (130, 143)  training stopped by a signal after saving a resumable state
"""
from __future__ import annotations

import re
import signal
import sys


class VitkitError(Exception):
    """Base of every error a run can end with on purpose; `exit_code` is what the CLI exits with."""
    exit_code = 2
    prefix = "error: "  # what the CLI puts between 'vitkit: ' and the message


class UserError(VitkitError):
    """A mistake in the user's input (arguments, config, data, files), with a message that says how to fix it."""


class DataError(UserError):
    """Data that cannot be used as given (missing files, empty classes, no readable images)."""


class BadImage(DataError):
    """An image file that cannot be used; `reason` is one of REASONS, the message says what was wrong."""
    REASONS = ("empty", "unreadable", "not-an-image", "format-refused", "too-large", "truncated", "aspect-ratio")

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


class OutOfMemory(UserError):
    """An allocation failed; the message says how much was asked for and what to lower."""


class NonFiniteLoss(VitkitError):
    """The loss became NaN or infinite; the message says where and what to try."""
    exit_code = 1


class ExportMismatch(VitkitError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance (a bug to report, not a user error)."""
    exit_code = 1


class Interrupted(VitkitError):
    """Training stopped on a signal after saving; `exit_code` is the shell's convention (130, 143)."""
    prefix = ""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def out_of_memory(err: BaseException, advice: str, during: str = "") -> OutOfMemory | None:
    """For an allocation that failed (CUDA's OutOfMemoryError, or the CPU allocator refused), an `OutOfMemory` that
    says how much was asked for, then `advice`: "out of memory[ DURING] (tried to allocate 56.1 GiB on the CPU)ADVICE".
    None for any other error."""
    if not isinstance(err, RuntimeError):  # torch.OutOfMemoryError is one
        return None
    text = str(err)
    torch = sys.modules.get("torch")  # no allocation failed in torch if torch was never imported
    if torch is not None and isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in text:
        asked = re.search(r"Tried to allocate ([\d.]+ \w+)", text)
        where = f"tried to allocate {asked.group(1)} on the GPU" if asked else "on the GPU"
    elif "can't allocate memory" in text:
        asked = re.search(r"allocate (\d+) bytes", text)
        where = f"tried to allocate {int(asked.group(1)) / 2 ** 30:,.1f} GiB on the CPU" if asked else "on the CPU"
    else:
        return None
    return OutOfMemory(f"out of memory{during} ({where}){advice}")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
