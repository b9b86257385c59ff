"""examples/quickstart.ipynb runs top to bottom in a fresh kernel and shows what it says it shows."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("nbclient")


def _outputs(nb: dict) -> list[tuple[str, dict]]:
    return [("".join(c["source"]), o) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(executed_quickstart):
    path, error = executed_quickstart
    assert error is None, f"a cell raised: {error}"
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell ran"
    outputs = _outputs(nb)
    assert not [o for _, o in outputs if o["output_type"] == "error"]
    assert not [o for _, o in outputs if o.get("name") == "stderr" and "Traceback" in o.get("text", "")]
    # what the notebook promises: inline figures (line, contour, surface, comparison) and the plotly figure
    pngs = [src for src, o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4
    assert any(".line()" in s for s in pngs) and any(".contour()" in s for s in pngs)
    assert any(".surface()" in s for s in pngs) and any("plot_compare" in s for s in pngs)
    plotly = [o["data"]["application/vnd.plotly.v1+json"] for _, o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plotly) == 1 and plotly[0]["data"][0]["type"] == "surface"
    # the trained model is a real classifier and the comparison table has both optimizers
    text = "".join(o.get("text", "") for _, o in outputs if o["output_type"] == "stream")
    acc = float(text.split("→ test accuracy ")[1].split("%")[0])
    assert acc > 85
    assert "SGD" in text and "Adam" in text and "rise_radius_xpos" in text


@pytest.mark.slow
def test_a_cell_that_raises_fails_the_run(tmp_path):
    """The notebook check notices a failing cell (what the fixture reports as the error)."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("1 / 0")])
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="ZeroDivisionError"):
        nbclient.NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
