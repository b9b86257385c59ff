"""Running the ``lossmap`` command line in-process, as the CLI tests do."""

from __future__ import annotations

from lossmap.cli import main


def run_ok(argv, capsys) -> str:
    """Run ``lossmap argv``; it must exit 0. Returns its stdout."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def run_fail(argv, capsys, *needles: str) -> str:
    """Run ``lossmap argv``; it must exit 2 with one ``lossmap: error:`` line on stderr (holding every needle)
    and no traceback. Returns that line."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors (bad choice, missing option) exit from parse_args
        rc = exc.code
    captured = capsys.readouterr()
    assert rc == 2, (captured.out, captured.err)
    lines = captured.err.strip("\n").split("\n")
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("lossmap: error: "), captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
