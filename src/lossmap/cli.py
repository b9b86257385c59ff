"""The ``lossmap`` command: parses, calls the library, prints.

Each sub-command lives in ``lossmap.commands.<name>`` and provides ``add_parser(subparsers)``
(which sets ``func`` to its ``run(args) -> int``). User errors (:class:`LossmapError`) become one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .errors import LossmapError

COMMANDS = ("demo", "surface", "interpolate", "plot", "info", "report", "compare", "export", "trajectory", "animate",
            "hessian", "connect", "curve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2 (argparse prints usage too)
        self.exit(2, f"lossmap: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lossmap", description="Loss landscapes of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"lossmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lossmap.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lossmap.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


class _Warnings(logging.Handler):
    """The library's warnings (a fast path not taken, statistics that turn negative, …) as one stderr line each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"lossmap: warning: {record.getMessage()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    log = logging.getLogger("lossmap")
    handler = _Warnings() if not log.handlers else None
    if handler is not None:
        log.addHandler(handler)
    try:
        return int(args.func(args) or 0)
    except LossmapError as exc:
        print(f"lossmap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # compute() says how many points it saved
        print(f"lossmap: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        if handler is not None:
            log.removeHandler(handler)


def entry() -> None:
    """The ``lossmap`` program: it owns its process, so it keeps activation buffers in glibc's heap
    (:func:`lossmap.tune_allocator`; ``LOSSMAP_MALLOC=0`` leaves the allocator alone), then runs :func:`main`."""
    from ._alloc import tune

    tune()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`lossmap info f.nc | head`): stop quietly, as a C tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush cannot fail again
        code = 128 + 13
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
