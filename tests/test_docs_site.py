"""The documentation site: it builds with warnings as errors, and its pages render in headless Chromium.

The site is built once per module from this checkout (``mkdocs build --strict``), with the gallery taken
from the session's ``lossmap demo --quick --compare`` folder and the notebook from the session's executed
copy (tests/conftest.py), then served over HTTP on 127.0.0.1 and opened in Chromium (as tests/test_report.py
drives it), with a script that records console errors, uncaught exceptions and images that did not load.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def site(quick_demo, executed_quickstart, tmp_path_factory) -> Path:
    notebook, error = executed_quickstart
    if error is not None:
        pytest.fail(f"the notebook did not run, so the site cannot show it: {error}")
    out = tmp_path_factory.mktemp("site") / "site"
    env = dict(os.environ, LOSSMAP_DOCS_DEMO=str(quick_demo), LOSSMAP_DOCS_NOTEBOOK=str(notebook))
    proc = _mkdocs("build", "--strict", "--site-dir", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_site_builds_strict_with_every_page(site):
    for page in ("index.html", "cli/index.html", "python/index.html", "reading/index.html", "gallery/index.html",
                 "performance/index.html", "long-runs/index.html", "quickstart/index.html", "changelog/index.html",
                 "cli-reference/index.html", "api/landscape/index.html", "api/objective/index.html"):
        assert (site / page).is_file(), page
    for figure in ("plane_contour.png", "plane_surface.png", "interpolation_line.png", "compare.png", "report.html"):
        assert (site / "gallery" / figure).stat().st_size > 1000, figure
    assert "0.2.0" in (site / "changelog" / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_command_reference_lists_every_command_and_option(site):
    """Oracle: the parsers the ``lossmap`` program builds; every option string appears on the page."""
    from lossmap.cli import COMMANDS, build_parser

    text = (site / "cli-reference" / "index.html").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) <= set(COMMANDS) and len(sub.choices) >= 8
    for name, parser in sub.choices.items():
        assert f'id="lossmap-{name}"' in text, name
        for action in parser._actions:
            for flag in action.option_strings:
                assert f"<code>{flag}" in text, f"{name} {flag}"


def test_strict_settings_fail_on_a_broken_link_or_anchor(tmp_path):
    """The site's own strict and validation settings turn a broken link and a missing anchor into failures."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the guide](guide.md#no-such-heading) and [gone](missing.md).\n")
    (docs / "guide.md").write_text("# Guide\n\n## A heading\n")
    mini = {k: config[k] for k in ("site_name", "strict", "validation", "exclude_docs") if k in config}
    mini["docs_dir"] = str(docs)
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(mini), encoding="utf-8")
    proc = _mkdocs("build", "--site-dir", str(tmp_path / "site"), cwd=tmp_path)
    assert config["strict"] is True
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "no-such-heading" in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# headless Chromium
# ---------------------------------------------------------------------------------------------------------

# Injected first into each page: records console errors, uncaught errors and images that did not load.
_CATCHER = """<script>
window.__errs = [];
function __record(m) { window.__errs.push(String(m)); var e = document.getElementById('js-errors') ||
  document.documentElement.appendChild(Object.assign(document.createElement('pre'), {id: 'js-errors'}));
  e.textContent = window.__errs.join('\\n'); }
window.addEventListener('error', function (ev) {
  if (ev.target && ev.target !== window && ev.target.src) { __record('failed to load: ' + ev.target.src); }
  else { __record('uncaught: ' + ev.message); } }, true);
window.addEventListener('unhandledrejection', function (ev) { __record('rejection: ' + ev.reason); });
var __ce = console.error; console.error = function () { __record('console.error: ' +
  Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () { setTimeout(function () {
  Array.prototype.forEach.call(document.images, function (img) {
    if (!img.complete || img.naturalWidth === 0) { __record('image not shown: ' + img.getAttribute('src')); } });
  document.documentElement.setAttribute('data-images-checked', String(document.images.length)); }, 500); });
</script>"""


@pytest.fixture(scope="module")
def served(site, tmp_path_factory):
    """The built site (with the catcher in every page) over HTTP on the loopback address."""
    import shutil

    root = tmp_path_factory.mktemp("served") / "site"
    shutil.copytree(site, root)
    for page in root.rglob("index.html"):  # the site's pages (the demo's own reports: tests/test_report.py)
        text = page.read_text(encoding="utf-8")
        page.write_text(text.replace("<head>", "<head>" + _CATCHER, 1), encoding="utf-8")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _dom(url: str, profile: Path) -> str:
    from test_report import _chromium

    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1400,1000",
        "--dump-dom", url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = re.sub(r"<script\b[^>]*>.*?</script>", "", proc.stdout, flags=re.S)
    problems = re.findall(r'<pre id="js-errors">(.*?)</pre>', dom, flags=re.S)
    problems += [line for line in proc.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)]
    assert problems == [], f"{url}: {problems}"
    assert "data-images-checked" in dom, f"{url}: the page did not finish loading"
    return dom


@pytest.mark.slow
def test_gallery_shows_the_demo_figures(served, tmp_path):
    dom = _dom(f"{served}/gallery/", tmp_path / "profile")
    shown = set(re.findall(r'<img[^>]+src="(?:[./]*gallery/)?([\w-]+\.png)"', dom))
    assert {"interpolation_line.png", "slice1d_line.png", "plane_contour.png", "plane_contourf.png",
            "plane_heatmap.png", "plane_surface.png", "plane_line.png", "compare.png"} <= shown
    assert int(re.search(r'data-images-checked="(\d+)"', dom).group(1)) >= 8  # and every one of them loaded
    assert "lossmap demo --quick --compare" in dom and 'href="report.html"' in dom


@pytest.mark.slow
def test_api_reference_is_rendered_from_the_docstrings(served, tmp_path):
    dom = _dom(f"{served}/api/landscape/", tmp_path / "profile")
    for ident in ("lossmap.landscape.compute", "lossmap.directions.Directions", "lossmap.directions.random_directions",
                  "lossmap.directions.target_directions", "lossmap.store.load"):
        assert f'id="{ident}"' in dom, ident
    # the parameter tables and examples of compute() came from its docstring
    assert "doc-section-title" in dom and "Parameters:" in dom and "Returns:" in dom and "Examples:" in dom
    assert "memory_budget" in dom and "bytes (or" in dom
    dom = _dom(f"{served}/api/objective/", tmp_path / "profile2")
    assert 'id="lossmap.objective.Objective.hvp"' in dom and "forward-over-reverse" in dom


@pytest.mark.slow
def test_notebook_page_shows_figures_and_the_interactive_plot(served, tmp_path):
    dom = _dom(f"{served}/quickstart/", tmp_path / "profile")
    assert dom.count('src="data:image/png') >= 4  # the inline matplotlib figures
    assert 'class="main-svg"' in dom and 'class="gl-container"' in dom  # plotly drew the 3-D surface
    assert "Comparing two optimizers" in dom


@pytest.mark.slow
def test_guides_render_without_errors(served, tmp_path):
    for i, page in enumerate(("", "cli/", "python/", "reading/", "performance/", "long-runs/", "cli-reference/")):
        dom = _dom(f"{served}/{page}", tmp_path / f"profile{i}")
        assert '<h1 id=' in dom or "<h1>" in dom, page
