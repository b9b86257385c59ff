"""Build-time pages of the documentation site (MkDocs hooks, see mkdocs.yml).

Nothing here is copied by hand into docs/; every generated page comes from the code or from a run:

* ``cli-reference.md`` — every command and option, from the argparse parsers of ``lossmap.cli``;
* ``gallery/…`` — the figures, report and summary of a ``lossmap demo`` run: ``$LOSSMAP_DOCS_DEMO``, else
  ``lossmap-demo/`` when ``make demo`` made it, else ``build/docs/demo/`` (made here once with
  ``lossmap demo --quick --compare``);
* ``quickstart.ipynb`` — ``examples/quickstart.ipynb`` executed top to bottom (``$LOSSMAP_DOCS_NOTEBOOK``
  names an executed copy; else it is executed here with nbclient and kept in ``build/docs/`` until the
  notebook or the package changes), rendered by mkdocs-jupyter; its plotly figures (a mimetype that only
  Jupyter renders) become HTML drawn by the plotly.js that the plotly package ships, copied into the site;
* ``changelog.md`` — ``CHANGELOG.md``.

Docstrings written with Sphinx roles (``:func:`x```) are shown as code linked to the API reference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

log = logging.getLogger("mkdocs.hooks.lossmap")

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "docs"
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"

#: files of a demo folder the gallery shows; the comparison ones come from ``lossmap demo --compare`` only
GALLERY = ("interpolation_line.png", "slice1d_line.png", "plane_contour.png", "plane_contourf.png",
           "plane_heatmap.png", "plane_surface.png", "plane_line.png", "report.html", "summary.txt")
GALLERY_COMPARE = ("compare.png", "compare.html")
PLOTLY_JS = "assets/plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


# --------------------------------------------------------------------------------------------- events
@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "cli-reference.md", content=cli_reference()))
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text(encoding="utf-8")))
    demo = demo_folder()
    config["extra"]["lossmap_demo"] = str(demo)
    for name in GALLERY + GALLERY_COMPARE:
        if (demo / name).is_file():
            files.append(File.generated(config, f"gallery/{name}", abs_src_path=str(demo / name)))
    pages = BUILD / "pages"  # a real source folder: mkdocs-jupyter cannot read generated files
    pages.mkdir(parents=True, exist_ok=True)
    (pages / "quickstart.ipynb").write_text(site_notebook(executed_notebook()), encoding="utf-8")
    files.append(File("quickstart.ipynb", src_dir=str(pages), dest_dir=config["site_dir"],
                      use_directory_urls=config["use_directory_urls"]))
    files.append(File.generated(config, PLOTLY_JS, abs_src_path=str(plotly_js())))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- gallery:" not in markdown:
        return markdown
    demo = Path(config["extra"]["lossmap_demo"])
    return markdown.replace("<!-- gallery:made-by -->", gallery_made_by(demo)).replace(
        "<!-- gallery:compare -->", gallery_compare(demo))


_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def on_page_content(html: str, page, config, files) -> str:
    """``:func:`lossmap.x.y``` in a docstring → ``lossmap.x.y`` as code, linked where the reference has it;
    the notebook page loads plotly.js before its figures."""
    if page.file.src_uri == "quickstart.ipynb":
        # mkdocs-jupyter's template loads MathJax from an empty URL (the page itself) unless one is configured;
        # the notebook has no formulas, so the tag goes
        html = html.replace('<script src=""> </script>', "")
        html = f'<script src="{get_relative_url(PLOTLY_JS, page.url)}"></script>\n' + html

    def link(m: re.Match) -> str:
        short, ident = m.group(1), m.group(2)
        text = ident.rsplit(".", 1)[-1] if short else ident
        return f'<autoref identifier="{ident}" optional><code>{text}{m.group(3) or ""}</code></autoref>'

    return _ROLE.sub(link, html)


# --------------------------------------------------------------------------------------- CLI reference
def cli_reference() -> str:
    """The reference of every command, from the parsers the ``lossmap`` program itself builds."""
    from lossmap.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = [
        "# Command reference",
        "",
        "Generated from the command's own argument parsers when this site was built, so it lists exactly what "
        "`lossmap COMMAND --help` prints. The [command-line guide](cli.md) shows the commands at work.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    names = [n for n in COMMANDS if n in sub.choices]
    lines += [f"| [`{n}`](#lossmap-{n}) | {_cell(helps.get(n) or '')} |" for n in names]
    for name in names:
        lines += ["", *_command_section(name, sub.choices[name])]
    return "\n".join(lines) + "\n"


def _command_section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## lossmap {name}", "", parser.description or "", "", "```text", _usage(parser), "```"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = {"options": "Options", "optional arguments": "Options", "positional arguments": "Arguments"}.get(
            group.title or "", group.title or "")
        lines += ["", f"**{title}**", "", "| option | default | description |", "|---|---|---|"]
        for action in actions:
            lines.append(f"| {_flags(action)} | {_default(action)} | {_cell(_help(parser, action))} |")
    return lines


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        meta = action.metavar or action.dest
        return f"`{meta}`" + (" …" if action.nargs in ("+", "*") else "")
    meta = ""
    if action.nargs != 0:
        meta = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper())
        meta = " " + (" ".join(meta) if isinstance(meta, tuple) else meta)
        if action.nargs in ("+", "*"):
            meta += " …"
    return "<br>".join(f"`{flag}{meta}`" for flag in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.default == []:
        return ""
    return f"`{action.default}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        text = parser._get_formatter()._expand_help(action)
    if action.choices and action.option_strings and not action.metavar:
        text += f" (one of {', '.join(f'`{c}`' for c in action.choices)})"
    return text


def _cell(text: str) -> str:
    text = " ".join(str(text).split())
    text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"(?<![\\`*])\*", r"\\*", text)  # a glob such as 'fc*' is not emphasis


# ---------------------------------------------------------------------------------------------- gallery
def demo_folder() -> Path:
    """Where the gallery's figures come from (see the module docstring); runs the quick demo when none is there."""
    given = os.environ.get("LOSSMAP_DOCS_DEMO")
    candidates = [Path(given)] if given else [ROOT / "lossmap-demo", BUILD / "demo"]
    for folder in candidates:
        if all((folder / name).is_file() for name in GALLERY):
            return folder
    if given:
        missing = [n for n in GALLERY if not (Path(given) / n).is_file()]
        raise PluginError(f"LOSSMAP_DOCS_DEMO={given!r} lacks {', '.join(missing)}: point it at a 'lossmap demo' folder")
    out = BUILD / "demo"
    log.info("making the gallery: lossmap demo --quick --compare --out %s", out)
    proc = subprocess.run([sys.executable, "-m", "lossmap", "demo", "--quick", "--compare", "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PluginError(f"lossmap demo failed for the gallery: {proc.stderr.strip().splitlines()[-1:]}")
    return out


def gallery_made_by(demo: Path) -> str:
    summary = (demo / "summary.txt").read_text(encoding="utf-8")
    first = summary.splitlines()[0]
    numbers = dict(re.findall(r"^(\w+) = ([-+0-9.eE]+)", summary, flags=re.M))
    quick = "(quick)" in first
    command = "lossmap demo --quick --compare" if quick else "lossmap demo"
    acc = float(numbers.get("test_accuracy", "nan"))
    return (
        f"The figures below were made while this site was built, by `{command}` ({first.split(', ', 1)[-1]}; "
        f"the trained model's test accuracy {acc:.1%}). "
        + ("The quick demo trains one epoch and uses coarse grids on 200 test images; `make demo` gives the "
           "finer pictures (and `make docs` then takes its figures from `lossmap-demo/`). " if quick else "")
        + "Its [summary.txt](gallery/summary.txt) lists every file the demo wrote."
    )


def gallery_compare(demo: Path) -> str:
    if not all((demo / name).is_file() for name in GALLERY_COMPARE):
        return ("*This build's demo folder has no comparison: `lossmap demo --compare` adds `compare.png` and "
                "`compare.html`.*")
    return (
        "![SGD batch 8 against Adam batch 256: filter-normalized planes on one colour scale](gallery/compare.png)\n\n"
        "[The same comparison as an interactive report](gallery/compare.html)."
    )


# --------------------------------------------------------------------------------------------- notebook
def executed_notebook() -> Path:
    """``$LOSSMAP_DOCS_NOTEBOOK``, or the notebook executed here (kept until it or the package changes)."""
    given = os.environ.get("LOSSMAP_DOCS_NOTEBOOK")
    if given:
        if not Path(given).is_file():
            raise PluginError(f"LOSSMAP_DOCS_NOTEBOOK={given!r} does not exist")
        return Path(given)
    key = hashlib.sha256(NOTEBOOK.read_bytes())
    for path in sorted((ROOT / "src" / "lossmap").rglob("*.py")):
        key.update(path.read_bytes())
    out = BUILD / "quickstart.ipynb"
    stamp = BUILD / "quickstart.sha256"
    if out.is_file() and stamp.is_file() and stamp.read_text() == key.hexdigest():
        return out
    log.info("executing %s for the site (about a minute)", NOTEBOOK.relative_to(ROOT))
    BUILD.mkdir(parents=True, exist_ok=True)
    execute_notebook(NOTEBOOK, out)
    stamp.write_text(key.hexdigest())
    return out


def execute_notebook(source: Path, target: Path, timeout: int = 900) -> Path:
    """Run ``source`` top to bottom in a fresh kernel (in a temporary folder) and write the executed copy."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    with tempfile.TemporaryDirectory() as cwd:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def site_notebook(path: Path) -> str:
    """The executed notebook as the site shows it: each plotly figure as a div that plotly.js draws."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    count = 0
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME not in data:
                continue
            count += 1
            fig = data.pop(PLOTLY_MIME)
            div = f"lossmap-plotly-{count}"
            layout = fig.setdefault("layout", {})
            layout.pop("width", None)  # the page's column decides
            height = int(layout.get("height") or 520)
            args = ", ".join(json.dumps(fig.get(k) or {}) for k in ("data", "layout"))
            data["text/html"] = (
                f'<div id="{div}" class="plotly-graph-div" style="height:{height}px; width:100%;"></div>\n'
                f'<script>Plotly.newPlot("{div}", {args}, {{"responsive": true}});</script>'
            )
    return json.dumps(nb, ensure_ascii=False)


def plotly_js() -> Path:
    """plotly.js as the installed plotly package ships it (what the HTML report embeds)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise PluginError(f"plotly.js is not at {path}: reinstall plotly")
    return path
