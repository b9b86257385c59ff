"""The interactive HTML report: figure orientation, shared scales, page content, and a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lossmap import stats, store
from lossmap.cli import main
from lossmap.errors import LossmapError
from lossmap.plot.interactive import comparison_figures, landscape_figures, write_report

from cli_run import run_fail

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def landscape(x, y=None, scale=1.0, markers=None):
    """loss = scale·(0.1 + 2x² + 0.5(y−0.2)² + 0.3xy) plus a marker; accuracy = 1/(1+loss)."""
    x = np.asarray(x, dtype=np.float64)
    attrs = {
        "lossmap_format": store.FORMAT, "lossmap_format_version": 1, "directions_kind": "random", "seed": 7,
        "normalization": "filter", "bias_policy": "zero", "data": "synthetic bowl", "samples": 123,
        "x_label": "α (δ: random, filter-normalized)", "y_label": "β (η: random, filter-normalized)",
        "markers": json.dumps(markers or {"θ*": [0, 0]}), "metrics": '["loss", "accuracy"]',
    }
    if y is None:
        loss = scale * (0.1 + 2 * x**2)
        return xr.Dataset({"loss": (("x",), loss), "accuracy": (("x",), 1 / (1 + loss))}, coords={"x": x},
                          attrs={**attrs, "ndim": 1})
    y = np.asarray(y, dtype=np.float64)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    loss = scale * (0.1 + 2 * xx**2 + 0.5 * (yy - 0.2) ** 2 + 0.3 * xx * yy)
    return xr.Dataset({"loss": (("x", "y"), loss), "accuracy": (("x", "y"), 1 / (1 + loss))},
                      coords={"x": x, "y": y}, attrs={**attrs, "ndim": 2})


def plotly_calls(text: str) -> dict[str, list]:
    """{div id: data traces} of every ``Plotly.newPlot("id", [...])`` in a page."""
    out = {}
    dec = json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', text):
        data, _ = dec.raw_decode(text, m.end())
        out[m.group(1)] = data
    return out


# ---------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------


def test_surface_and_contour_put_x_on_columns_for_a_non_square_grid():
    nx, ny = 5, 3
    ds = landscape(np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny))
    ds["loss"] = (("x", "y"), 10.0 * np.arange(nx)[:, None] + np.arange(ny)[None, :])  # loss[i, j] = 10i + j
    figs = landscape_figures(ds)
    surf, cont = figs["surface"].data[0], figs["contour"].data[0]
    for tr in (surf, cont):
        assert list(tr.x) == list(ds.x.values) and list(tr.y) == list(ds.y.values)
        z = np.array(tr.z, dtype=float)
        assert z.shape == (ny, nx)
        cd = np.array(tr.customdata, dtype=float)
        assert cd.shape == (ny, nx, 2)
        for i in range(nx):
            for j in range(ny):
                assert cd[j, i, 0] == 10 * i + j
                assert cd[j, i, 1] == ds.accuracy.values[i, j]
    np.testing.assert_array_equal(np.array(cont.z, dtype=float), ds.loss.values.T)
    # the surface is clipped at the 95th percentile of the values, hover keeps the stored ones
    hi = np.percentile(ds.loss.values, 95)
    np.testing.assert_allclose(np.array(surf.z, dtype=float), np.minimum(ds.loss.values.T, hi))
    assert surf.cmax == pytest.approx(hi) and surf.cmin == 0.0
    assert "α=%{x" in surf.hovertemplate and "β=%{y" in surf.hovertemplate
    assert "loss=%{customdata[0]" in surf.hovertemplate and "accuracy=%{customdata[1]" in surf.hovertemplate


@pytest.mark.parametrize("encoded", [True, False])
def test_markers_drawn_from_json_text_or_decoded_attrs(encoded):
    ds = landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), markers={"A": [0, 0], "B": [1, 0], "C": [0.3, 0.8]})
    if not encoded:  # what compute() returns in memory, before a file round trip
        ds.attrs = store.meta(ds)
    marks = [t for t in landscape_figures(ds)["contour"].data if t.type == "scatter"]
    assert len(marks) == 1
    assert list(marks[0].text) == ["A", "B", "C"]
    assert list(marks[0].x) == [0, 1, 0.3] and list(marks[0].y) == [0, 0, 0.8]


def test_contour_map_keeps_equal_units_unless_it_would_be_a_sliver():
    square = landscape_figures(landscape(np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 4)))["contour"]
    assert square.layout.yaxis.scaleanchor == "x" and square.layout.yaxis.scaleratio == 1
    sliver = landscape_figures(landscape(np.linspace(-1, 1, 5), np.linspace(-0.1, 0.1, 4)))["contour"]
    assert sliver.layout.yaxis.scaleanchor is None


def test_cross_sections_are_the_central_row_and_column():
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 5)
    ds = landscape(x, y)
    traces = {t.name: t for t in landscape_figures(ds)["lines"].data}
    np.testing.assert_allclose(np.array(traces["loss along α (β=0)"].y, dtype=float), ds.loss.values[:, 2])
    np.testing.assert_allclose(np.array(traces["loss along β (α=0)"].y, dtype=float), ds.loss.values[4, :])
    np.testing.assert_allclose(np.array(traces["accuracy along β (α=0)"].x, dtype=float), y)


def test_nan_and_inf_points_are_gaps_not_numbers():
    ds = landscape(np.linspace(-1, 1, 4), np.linspace(-1, 1, 3))
    loss = ds.loss.values.copy()
    loss[1, 2], loss[3, 0] = np.nan, np.inf
    ds["loss"] = (("x", "y"), loss)
    cont = landscape_figures(ds)["contour"].data[0]
    assert cont.z[2][1] is None and cont.z[0][3] is None
    assert cont.z[1][1] == loss[1, 1]


def test_comparison_shares_colour_range_and_contour_levels():
    x, y = np.linspace(-1, 1, 11), np.linspace(-1, 1, 7)
    a, b = landscape(x, y), landscape(x, y, scale=3.0)
    figs = comparison_figures([a, b], ["a", "b"])
    pooled = np.concatenate([a.loss.values.ravel(), b.loss.values.ravel()])
    lo, hi = pooled.min(), np.percentile(pooled, 95)
    for key in ("contour", "surface"):
        fig = figs[key]
        assert fig.layout.coloraxis.cmin == pytest.approx(lo) and fig.layout.coloraxis.cmax == pytest.approx(hi)
        main_traces = [t for t in fig.data if t.type in ("contour", "surface")]
        assert len(main_traces) == 2 and all(t.coloraxis == "coloraxis" for t in main_traces)
    conts = [t for t in figs["contour"].data if t.type == "contour"]
    assert conts[0].contours.to_plotly_json() == conts[1].contours.to_plotly_json()
    assert conts[0].zmin == conts[1].zmin == pytest.approx(lo) and conts[0].zmax == conts[1].zmax == pytest.approx(hi)
    levels = np.arange(conts[0].contours.start, conts[0].contours.end + 1e-9, conts[0].contours.size)
    assert 8 <= len(levels) <= 20 and levels[0] >= lo and levels[-1] <= hi
    # surfaces of the smaller landscape are not rescaled: same z axis range in every scene
    assert figs["surface"].layout.scene.zaxis.range == figs["surface"].layout.scene2.zaxis.range


def test_log_scale_draws_log10_and_keeps_hover_values():
    ds = landscape(np.linspace(-1, 1, 6), np.linspace(-1, 1, 4))
    cont = landscape_figures(ds, log=True)["contour"].data[0]
    np.testing.assert_allclose(np.array(cont.z, dtype=float), np.log10(ds.loss.values.T))
    np.testing.assert_allclose(np.array(cont.customdata, dtype=float)[..., 0], ds.loss.values.T)


def test_degenerate_2d_grid_gets_curves_only_and_page_decodes_json_text(tmp_path):
    ds = landscape(np.linspace(-1, 1, 5), np.array([0.0]))
    ds.attrs["direction_labels"] = json.dumps(["α (δ)", "β (η)"])  # JSON text outside store.JSON_ATTRS
    figs = landscape_figures(ds)
    assert list(figs) == ["lines"]
    text = write_report(ds, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<td>[&quot;α (δ)&quot;, &quot;β (η)&quot;]</td>" in text


def test_comparison_refuses_different_grids():
    with pytest.raises(LossmapError, match="different y grid"):
        comparison_figures([landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)),
                            landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 6))], ["a", "b"])


# ---------------------------------------------------------------------------------------------------------
# the written page
# ---------------------------------------------------------------------------------------------------------


def test_report_is_self_contained_and_holds_everything(tmp_path):
    x, y = np.linspace(-1, 1, 7), np.linspace(-0.6, 0.6, 4)
    a, b = landscape(x, y), landscape(x, y, scale=2.0)
    path = write_report([a, b], tmp_path / "r.html", titles=["sgd", "adam <b>"])
    text = path.read_text(encoding="utf-8")
    assert "plotly.js v" in text and len(text) > 1_000_000  # the library itself is embedded
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert text.count("plotly.js v") == 1  # embedded once, not per figure
    assert "adam &lt;b&gt;" in text and "<h2>Comparison</h2>" in text
    calls = plotly_calls(text)
    # comparison: contours, surfaces, curves; per landscape: surface, contour, curves
    assert len(calls) == 3 + 2 * 3
    surfaces = [t for data in calls.values() for t in data if t["type"] == "surface"]
    assert len(surfaces) == 4
    first_own = next(d for d in calls.values() if len(d) == 1 and d[0]["type"] == "surface")[0]
    assert np.array(first_own["z"]).shape == (4, 7)
    np.testing.assert_allclose(np.array(first_own["customdata"], dtype=float)[..., 0], a.loss.values.T)
    # metadata table and summary numbers
    for key in ("directions_kind", "normalization", "synthetic bowl", "rise_radius_xpos", "ball_mean_increase"):
        assert key in text
    s = stats.summarize(a)
    assert f'<td class="num">{s["rise_radius_xpos"]:.6g}</td>' in text
    assert f'<td class="num">{s["ball_mean_increase"]:.6g}</td>' in text


def test_report_of_mixed_landscapes_explains_why_there_is_no_comparison(tmp_path):
    one = landscape(np.linspace(-0.5, 1.5, 21), markers={"A": [0], "B": [1]})
    two = landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    text = write_report([one, two], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Not drawn side by side" in text and "1-D" in text and "<h2>Comparison</h2>" not in text
    assert '<a href="#landscape-2">landscape 2</a>' in text
    assert "landscape 1" in text and "landscape 2" in text
    calls = plotly_calls(text)
    line = next(d for d in calls.values() if d[0]["name"] == "loss")
    np.testing.assert_allclose(np.array(line[0]["y"], dtype=float), one.loss.values)


def test_write_report_user_errors(tmp_path):
    ds = landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    with pytest.raises(LossmapError, match="does not exist"):
        write_report(ds, tmp_path / "no" / "r.html")
    with pytest.raises(LossmapError, match="1 titles for 2"):
        write_report([ds, ds], tmp_path / "r.html", titles=["x"])
    with pytest.raises(LossmapError, match="at least one"):
        write_report([], tmp_path / "r.html")


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------


def test_cli_report_writes_page_and_prints_summary(tmp_path, capsys):
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 5)
    fa = store.save(landscape(x, y), tmp_path / "a.nc")
    fb = store.save(landscape(x, y, scale=2.0), tmp_path / "b.nc")
    out = tmp_path / "r.html"
    assert main(["report", str(fa), str(fb), "--out", str(out), "--rise", "0.5"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout
    header = stdout.splitlines()[0].split()
    assert header == ["a", "b"]
    rise_row = next(line for line in stdout.splitlines() if line.startswith("rise "))
    assert rise_row.split()[1:] == ["0.5", "0.5"]
    text = out.read_text(encoding="utf-8")
    assert "<h2>Comparison</h2>" in text and 'id="landscape-2">b</h2>' in text


def test_cli_report_refuses_bad_input_with_one_line(tmp_path, capsys):
    ds = landscape(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    f = store.save(ds, tmp_path / "a.nc")
    out = tmp_path / "r.html"
    out.write_text("an older report")
    run_fail(["report", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "n.html")], capsys, "does not exist")
    (tmp_path / "junk.nc").write_bytes(b"not a landscape")
    run_fail(["report", str(tmp_path / "junk.nc"), "--out", str(tmp_path / "n.html")], capsys, "junk.nc")
    run_fail(["report", str(f), "--out", str(tmp_path / "n.html"), "--metric", "nope"], capsys, "'nope'")
    run_fail(["report", str(f), "--out", str(tmp_path / "n.html"), "--titles", "a", "b"], capsys, "--titles")
    assert out.read_text() == "an older report"  # refused runs leave it alone
    assert main(["report", str(f), "--out", str(out)]) == 0  # a report is made from files: it is replaced
    assert "plotly.js v" in out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# headless Chromium
# ---------------------------------------------------------------------------------------------------------

# Injected before the report's own scripts: records uncaught errors and console.error calls in the DOM.
_CATCHER = """<script>
window.__errs = [];
function __record(m) { window.__errs.push(String(m)); var e = document.getElementById('js-errors') ||
  document.documentElement.appendChild(Object.assign(document.createElement('pre'), {id: 'js-errors'}));
  e.textContent = window.__errs.join('\\n'); }
window.addEventListener('error', function (ev) { __record('uncaught: ' + ev.message); });
window.addEventListener('unhandledrejection', function (ev) { __record('rejection: ' + ev.reason); });
var __ce = console.error; console.error = function () { __record('console.error: ' +
  Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if not found:
        subprocess.run(["sh", str(Path(__file__).with_name("ensure_chromium.sh"))], check=False, timeout=900)
        found = shutil.which("chromium") or (Path("/usr/bin/chromium").exists() and "/usr/bin/chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed and tests/ensure_chromium.sh could not install it")
    return str(found)


def _browse(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1400,1000", *extra,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _page_problems(proc: subprocess.CompletedProcess) -> list[str]:
    dom = re.sub(r"<script\b[^>]*>.*?</script>", "", proc.stdout, flags=re.S)
    problems = []
    m = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, flags=re.S)
    if m:
        problems.append(m.group(1))
    problems += [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    if "WebGL is not supported" in dom:
        problems.append("plotly reports that WebGL is not supported")
    return problems


def _with_catcher(src: Path, dst: Path) -> Path:
    text = src.read_text(encoding="utf-8")
    dst.write_text(text.replace("<head>", "<head>" + _CATCHER, 1), encoding="utf-8")
    return dst


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_js_errors(tmp_path):
    ds = landscape(np.linspace(-1, 1, 25), np.linspace(-0.8, 0.8, 17))
    ds = stats.attach(ds)
    page = _with_catcher(write_report(ds, tmp_path / "report.html", titles=["bowl"]), tmp_path / "checked.html")

    proc = _browse(page, tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _page_problems(proc) == []
    dom = re.sub(r"<script\b[^>]*>.*?</script>", "", proc.stdout, flags=re.S)
    assert dom.count('class="main-svg"') >= 3  # plotly drew its SVG layers for every figure
    assert dom.count('class="gl-container"') >= 1 and "<canvas" in dom  # the 3-D surface's WebGL canvas
    assert 'class="contourlevel"' in dom or 'class="contour"' in dom  # contour lines were traced
    assert "rise_radius_xpos" in dom and "directions_kind" in dom  # tables

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = _browse(page, tmp_path / "profile2", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert img.shape[:2] == (1000, 1400)
    # the surface panel (left, below the heading) shows colour-mapped pixels only if WebGL really drew it
    panel = img[150:700, 40:640]
    colourful = (panel.max(axis=2) - panel.min(axis=2)) > 80
    assert colourful.mean() > 0.05, f"surface panel has only {colourful.mean():.1%} colour-mapped pixels"


@pytest.mark.slow
def test_the_browser_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><script>undefinedFunction();</script></body></html>")
    proc = _browse(_with_catcher(page, tmp_path / "checked.html"), tmp_path / "profile", "--dump-dom")
    problems = _page_problems(proc)
    assert problems and "undefinedFunction" in problems[0]
