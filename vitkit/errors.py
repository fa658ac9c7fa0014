"""Errors a user can cause and fix.

Library code raises `UserError` with one sentence that names the problem and the fix; the CLI prints it on one
line and exits with code 2, never with a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (arguments, config, data, files), with a message that says how to fix it."""


class DataError(UserError):
    """Data that cannot be used as given (missing files, empty classes, no readable images)."""
