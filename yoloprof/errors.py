"""Errors a user can fix: the CLI prints their one line and exits 2, never a traceback."""


class UsageError(Exception):
    """Bad input. The message says what is wrong and how to fix it, in one line."""


class ScanFailed(Exception):
    """The scan stopped early for a reason every trial would hit (exit code 1)."""
