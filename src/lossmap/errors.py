"""The one exception type lossmap raises for user errors."""

from __future__ import annotations


class LossmapError(Exception):
    """A user error: the message names the bad value and says how to fix it.

    The command line prints it as one line on stderr and exits with status 2.
    """


def fail(message: str) -> "LossmapError":
    """Return a :class:`LossmapError` (``raise fail("...")`` reads naturally)."""
    return LossmapError(message)
