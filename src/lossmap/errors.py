"""The one exception type lossmap raises for user errors."""

from __future__ import annotations


class LossmapError(Exception):
    """A user error: the message names the bad value and says how to fix it.

    The command line prints it as one line on stderr and exits with status 2.

    Examples:
        >>> import torch, lossmap
        >>> try:
        ...     lossmap.compute(torch.nn.Linear(2, 1), (torch.randn(4, 2), torch.randn(4, 1)), x="-1:1")
        ... except lossmap.LossmapError as exc:
        ...     print(exc)
        x axis spec '-1:1' is malformed: write min:max:count, e.g. '-1:1:51'
    """


def fail(message: str) -> "LossmapError":
    """Return a :class:`LossmapError` (``raise fail("...")`` reads naturally)."""
    return LossmapError(message)
