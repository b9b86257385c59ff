"""Every code block of the README and of the site's guides runs as written.

Blocks run page by page, in order, in an empty folder that holds a copy of a ``lossmap demo --quick --compare``
folder as ``lossmap-demo/`` (what the pages' "after make demo" means): ``python`` blocks in one shared
namespace per page (as one script), ``bash``/``sh``/unlabelled blocks with ``bash -euo pipefail``. A block that
must not run is preceded by ``<!-- not-run: the reason -->``; any other language (``text``, ``yaml``, …)
must be marked so too. A block that repeats a guide's commands (the README's summaries) is preceded by
``<!-- runs-in: docs/page.md -->``: it is not run twice, but each of its commands must be one of that page's run
commands, word for word. The generated pages (command and API reference) and the notebook are checked elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "": "bash"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
RUNS_IN = re.compile(r"<!--\s*runs-in:\s*(\S+?)\s*-->")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None  # the reason it does not run, or None
    runs_in: str | None = None  # the page (relative to the repository) whose blocks run its commands

    @property
    def runs_here(self) -> bool:
        return self.skip is None and self.runs_in is None and self.lang in RUNNABLE


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page (fences at the start of a line), with their not-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker, runs_in = NOT_RUN.search(prev), RUNS_IN.search(prev)
        out.append(Block(path.name, start + 1, lang, "\n".join(lines[start + 1 : j]), marker.group(1) if marker else None,
                         runs_in.group(1) if runs_in else None))
        i = j + 1
    return out


def commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped, spaces collapsed."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        if line:
            out.append(line)
    return out


def guide_pages() -> list[Path]:
    """The README and the hand-written pages of the site (docs/*.md; the API pages only render docstrings)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# Runs a page's blocks in order; reports the first failure with the page and line.
DRIVER = r"""
import json, subprocess, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__docs__"}
for b in blocks:
    where = f"{b['page']}, block at line {b['line']}"
    if b["kind"] == "python":
        try:
            exec(compile(b["code"], where, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            sys.exit(f"FAILED: {where}")
    else:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", b["code"]])
        if proc.returncode != 0:
            sys.exit(f"FAILED: {where} (exit status {proc.returncode})")
    print(f"ok: {where}", flush=True)
"""


def test_every_block_is_runnable_or_says_why_not():
    problems, runnable = [], 0
    for page in guide_pages():
        for b in blocks_of(page):
            if b.skip is not None:
                if len(b.skip) < 8:
                    problems.append(f"{b.page}:{b.line}: the not-run marker needs a reason")
            elif b.runs_in is not None:
                runnable += 1
            elif b.lang not in RUNNABLE:
                problems.append(f"{b.page}:{b.line}: a '{b.lang}' block must be marked <!-- not-run: reason -->")
            else:
                runnable += 1
    assert not problems, "\n".join(problems)
    assert runnable >= 15  # the guides really are checked


def test_block_parser_reads_fences_markers_and_languages(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\nx = 1\n```\n<!-- not-run: needs a GPU here -->\n\n```bash\nnvidia-smi\n```\n"
                    "````text\n```\ninner\n```\n````\n<!-- runs-in: docs/a.md -->\n```\nls\n```\n", encoding="utf-8")
    found = blocks_of(page)
    assert [(b.lang, b.line, b.skip, b.runs_in) for b in found] == [
        ("python", 3, None, None), ("bash", 8, "needs a GPU here", None), ("text", 11, None, None), ("", 17, None, "docs/a.md")]
    assert found[0].code == "x = 1" and found[2].code == "```\ninner\n```"
    assert [b.runs_here for b in found] == [True, False, False, False]
    assert commands("a --x 1 \\\n    --y  2   # say\n\n# note\nb#c d\n") == ["a --x 1 --y 2", "b#c d"]


def test_blocks_said_to_run_elsewhere_are_run_there():
    problems, checked = [], 0
    for page in guide_pages():
        for b in blocks_of(page):
            if b.runs_in is None:
                continue
            there = ROOT / b.runs_in
            if there not in guide_pages() or RUNNABLE.get(b.lang) != "bash":
                problems.append(f"{b.page}:{b.line}: runs-in needs a shell block and one of the guide pages, not {b.runs_in}")
                continue
            run = {c for other in blocks_of(there) if other.runs_here and RUNNABLE[other.lang] == "bash"
                   for c in commands(other.code)}
            problems += [f"{b.page}:{b.line}: {c!r} is not run by {b.runs_in}" for c in commands(b.code) if c not in run]
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 3  # the README's summaries of the getting-started, uncertainty and curvature guides


@pytest.mark.slow
@pytest.mark.parametrize("page", [p.name for p in guide_pages()])
def test_page_blocks_run_as_written(page, quick_demo, tmp_path):
    path = next(p for p in guide_pages() if p.name == page)
    todo = [{"page": b.page, "line": b.line, "kind": RUNNABLE[b.lang], "code": b.code}
            for b in blocks_of(path) if b.runs_here]
    if not todo:
        pytest.skip(f"{page} has no runnable block")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(quick_demo, work / "lossmap-demo")
    (tmp_path / "blocks.json").write_text(json.dumps(todo), encoding="utf-8")
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), MPLBACKEND="Agg",
               PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "blocks.json")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:] + "\n" + proc.stderr[-5000:])
    assert proc.stdout.count("ok: ") == len(todo)
