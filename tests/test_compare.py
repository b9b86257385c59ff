"""``lossmap compare``: side-by-side figures of landscapes on one grid, refusals with one line otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from lossmap import stats, store
from lossmap.cli import main

from cli_run import run_fail


def landscape(nx=9, ny=7, scale=1.0, one_d=False, extra_metric=False):
    x = np.linspace(-1, 1, nx)
    attrs = {"lossmap_format": store.FORMAT, "lossmap_format_version": 1, "directions_kind": "random",
             "normalization": "filter", "markers": json.dumps({"θ*": [0, 0]})}
    if one_d:
        loss = scale * (0.1 + x**2)
        return xr.Dataset({"loss": (("x",), loss), "accuracy": (("x",), 1 / (1 + loss))}, coords={"x": x},
                          attrs={**attrs, "ndim": 1, "metrics": '["loss", "accuracy"]'})
    y = np.linspace(-1, 1, ny)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    loss = scale * (0.1 + xx**2 + 0.3 * yy**2)
    data = {"loss": (("x", "y"), loss), "accuracy": (("x", "y"), 1 / (1 + loss))}
    if extra_metric:
        data["error"] = (("x", "y"), loss / (1 + loss))
    return xr.Dataset(data, coords={"x": x, "y": y},
                      attrs={**attrs, "ndim": 2, "metrics": json.dumps(list(data))})


@pytest.fixture
def files(tmp_path):
    return {
        "sgd": store.save(landscape(), tmp_path / "sgd.nc"),
        "adam": store.save(landscape(scale=3.0), tmp_path / "adam.nc"),
        "wide": store.save(landscape(nx=11), tmp_path / "wide.nc"),
        "metric": store.save(landscape(extra_metric=True), tmp_path / "metric.nc"),
        "line_a": store.save(landscape(one_d=True), tmp_path / "line_a.nc"),
        "line_b": store.save(landscape(one_d=True, scale=2.0), tmp_path / "line_b.nc"),
    }


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_compare_writes_figure_report_and_a_summary_table(files, tmp_path, capsys):
    out, html = tmp_path / "cmp.png", tmp_path / "cmp.html"
    argv = ["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--html", str(html), "--rise", "0.2"]
    assert main(argv) == 0
    w, h = _png_size(out)
    assert w > 1.5 * h  # two panels side by side
    text = html.read_text(encoding="utf-8")
    assert "<h2>Comparison</h2>" in text and "plotly.js v" in text
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert lines[0].split() == ["sgd", "adam"]
    # the printed numbers are the library's, per file, on the same rise
    s_sgd = stats.summarize(landscape(), rise=0.2)
    s_adam = stats.summarize(landscape(scale=3.0), rise=0.2)
    row = next(line for line in lines if line.startswith("rise_radius_xpos "))
    assert [float(v) for v in row.split()[1:]] == pytest.approx([s_sgd["rise_radius_xpos"], s_adam["rise_radius_xpos"]], rel=1e-3)
    # √(0.2/scale) for loss = scale·(0.1 + x²): flatter model has the larger radius
    assert s_sgd["rise_radius_xpos"] > s_adam["rise_radius_xpos"]
    assert f"wrote {out}" in stdout and f"wrote {html}" in stdout


@pytest.mark.parametrize("kind", ["contourf", "heatmap", "surface", "line"])
def test_compare_kinds_and_titles(files, tmp_path, kind):
    out = tmp_path / f"{kind}.svg"
    argv = ["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--kind", kind, "--log",
            "--titles", "SGD small batch", "Adam large batch"]
    assert main(argv) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg[:500]
    # matplotlib's SVG backend keeps text as glyph paths but names them in comments
    assert "SGD small batch" in svg and "Adam large batch" in svg


def test_compare_one_d_files(files, tmp_path):
    out = tmp_path / "lines.png"
    assert main(["compare", str(files["line_a"]), str(files["line_b"]), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_compare_refuses_mismatches_with_one_line(files, tmp_path, capsys):
    out = tmp_path / "c.png"
    run_fail(["compare", str(files["sgd"]), str(files["wide"]), "--out", str(out)], capsys,
             "wide", "different x grid", "-1:1:11", "-1:1:9")
    run_fail(["compare", str(files["sgd"]), str(files["metric"]), "--out", str(out)], capsys, "metrics", "error")
    run_fail(["compare", str(files["sgd"]), str(files["line_a"]), "--out", str(out)], capsys, "1-D")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--metric", "nope"], capsys, "'nope'")
    assert not out.exists()


def test_compare_refuses_bad_arguments_with_one_line(files, tmp_path, capsys):
    out = tmp_path / "c.png"
    run_fail(["compare", str(files["sgd"]), "--out", str(out)], capsys, "at least two")
    run_fail(["compare", str(files["sgd"]), str(tmp_path / "missing.nc"), "--out", str(out)], capsys, "missing.nc", "does not exist")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(tmp_path / "c.gif")], capsys, ".png")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--titles", "one"], capsys, "--titles")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--kind", "pie"], capsys, "--kind")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--levels", "0"], capsys, "--levels 0")
    run_fail(["report", str(files["sgd"]), "--out", str(tmp_path / "r.html"), "--levels", "1"], capsys, "--levels 1")
    run_fail(["report", str(files["sgd"]), "--out", str(tmp_path / "r.html"), "--metric", "acuracy"], capsys, "acuracy")
    out.write_bytes(b"old")
    html = tmp_path / "c.html"
    html.write_text("old")
    run_fail(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--html", str(html),
                    "--metric", "nope"], capsys, "'nope'")
    assert out.read_bytes() == b"old" and html.read_text() == "old"  # a refused run leaves them alone
    # figures and pages are made from the landscape files, so existing ones are replaced
    assert main(["compare", str(files["sgd"]), str(files["adam"]), "--out", str(out), "--html", str(html)]) == 0
    assert _png_size(out)[0] > 100 and "plotly" in html.read_text(encoding="utf-8")


def test_compare_notes_different_normalization_but_still_draws(tmp_path, capsys):
    a, b = landscape(), landscape(scale=2.0)
    b.attrs["normalization"] = "none"
    fa, fb = store.save(a, tmp_path / "a.nc"), store.save(b, tmp_path / "b.nc")
    assert main(["compare", str(fa), str(fb), "--out", str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert err == "lossmap: note: the landscapes differ in normalization (a: filter, b: none)\n"
