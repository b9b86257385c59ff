"""``lossmap trajectory`` / ``animate`` and the trajectory file in ``info``, ``plot`` and ``report``:
values against plain torch forwards of the checkpoint files, the animation's frames, the report's
slider, and one-line errors (exit status 2, no traceback) for every bad run folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lossmap import store
from lossmap.cli import main
from lossmap.models import load_model
from lossmap.trajectory import Recorder, read_paths

from cli_run import run_fail, run_ok

NETS = textwrap.dedent(
    """
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))

    def wider():
        return nn.Sequential(nn.Linear(16, 20), nn.Tanh(), nn.Linear(20, 3))
    """
)


def train(folder, spec, x, y, optimizer: str, steps: int = 12, every: int = 2) -> None:
    torch.manual_seed(0)  # one initialization for every run
    net = load_model(spec)
    opt = torch.optim.SGD(net.parameters(), lr=0.5) if optimizer == "sgd" else torch.optim.Adam(net.parameters(), lr=0.05)
    rec = Recorder(folder, schedule=every)
    for step in range(steps + 1):
        rec.save(net, step=step)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("trajcli")
    (root / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 16)).astype(np.float32), rng.integers(0, 3, 40)
    np.savez(root / "data.npz", x=x, y=y)
    spec = f"{root / 'nets.py'}:mlp"
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    train(root / "sgd", spec, xt, yt, "sgd")
    train(root / "adam", spec, xt, yt, "adam", steps=8, every=1)
    out = root / "traj.nc"
    assert main(["trajectory", str(root / "sgd"), str(root / "adam"), "--model", spec, "--data",
                 f"npz:{root / 'data.npz'}", "--points", "7", "--labels", "SGD", "Adam", "--out", str(out)]) == 0
    return {"root": root, "model": spec, "data": f"npz:{root / 'data.npz'}", "x": xt, "y": yt, "out": out}


def test_the_file_holds_both_runs_and_each_checkpoints_own_metrics(env):
    ds = store.load(env["out"])
    assert list(ds.data_vars) == ["loss", "accuracy"]
    paths = read_paths(ds)
    assert [p.label for p in paths] == ["SGD", "Adam"]
    np.testing.assert_array_equal(paths[0].steps, [0, 2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(paths[1].steps, np.arange(9))
    net = load_model(env["model"])
    for p, folder in zip(paths, ("sgd", "adam")):
        for step, loss, acc in zip(p.steps, p.checkpoint["loss"], p.checkpoint["accuracy"]):
            net.load_state_dict(load_file(str(env["root"] / folder / f"step-{step:09d}.safetensors")))
            with torch.no_grad():
                out = net(env["x"]).double()
            assert loss == pytest.approx(F.cross_entropy(out, env["y"]).item(), rel=1e-5)
            assert acc == pytest.approx((out.argmax(1) == env["y"]).double().mean().item(), abs=1e-9)
    # one initialization: both runs start at the same point of the plane
    np.testing.assert_allclose(paths[0].coords[0], paths[1].coords[0], atol=1e-5)
    # the origin (SGD's final checkpoint) is on the plane: its plane loss is its own loss
    assert paths[0].plane["loss"][-1] == pytest.approx(paths[0].checkpoint["loss"][-1], rel=1e-5)
    assert ds.sizes["x"] == ds.sizes["y"] == 7


def test_rerun_is_unchanged_and_info_lists_the_runs(env, capsys):
    out = run_ok(["trajectory", env["root"] / "sgd", env["root"] / "adam", "--model", env["model"], "--data",
                  env["data"], "--points", "7", "--labels", "SGD", "Adam", "--out", env["out"]], capsys)
    assert "is unchanged" in out and "checkpoints, residual max" in out
    text = run_ok(["info", env["out"]], capsys)
    block = text[text.index("trajectory:"): text.index("metadata:")]
    assert "run SGD: 7 checkpoints, steps 0–12" in block and "run Adam: 9 checkpoints, steps 0–8" in block
    assert re.search(r"explained: \d+\.\d %", block)
    metrics = text[text.index("metrics:"): text.index("per-point errors:")]
    assert metrics.count("\n  ") == 2  # loss and accuracy only: the checkpoints are not metrics


def test_plot_draws_the_path_on_the_contour_and_surface(env, tmp_path, capsys):
    out = run_ok(["plot", env["out"], "--out", f"{tmp_path}/"], capsys)
    for kind in ("contour", "contourf", "heatmap", "surface", "line", "trajectory"):
        assert f"traj_{kind}.png" in out
        assert (tmp_path / f"traj_{kind}.png").read_bytes()[:4] == b"\x89PNG"
    from lossmap.plot.static import figure

    ds = store.load(env["out"])
    paths = read_paths(ds)
    fig = figure(ds, "contour")
    (ax,) = [a for a in fig.axes if a.get_legend() is not None]
    drawn = [c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == len(paths[1].steps)]
    assert drawn and np.allclose(drawn[0].get_offsets(), paths[1].coords)  # Adam's checkpoints, coloured by step
    assert np.allclose(drawn[0].get_array(), paths[1].steps)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["start", "end"] and "SGD" in labels and "Adam" in labels


def test_animate_writes_a_gif_with_one_frame_per_step(env, tmp_path, capsys):
    from PIL import Image

    gif = tmp_path / "run.gif"
    assert f"wrote {gif}" in run_ok(["animate", env["out"], "--out", gif, "--dpi", "40"], capsys)
    steps = np.unique(np.concatenate([p.steps for p in read_paths(store.load(env["out"]))]))
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == steps.size  # 0–8 and 10, 12
        img.seek(0)
        first = np.asarray(img.convert("RGB"))
        img.seek(img.n_frames - 1)
        last = np.asarray(img.convert("RGB"))
    assert (first != last).any()
    run_ok(["animate", env["out"], "--out", gif, "--max-frames", "3", "--dpi", "40"], capsys)  # replaced
    with Image.open(gif) as img:
        assert img.n_frames == 3
    assert "max_frames 0" in run_fail(["animate", env["out"], "--out", tmp_path / "a.gif", "--max-frames", "0"], capsys)


def test_animate_writes_an_mp4_where_an_ffmpeg_is_found(env, tmp_path, capsys):
    from lossmap.trajectory.animation import find_ffmpeg

    exe = find_ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg binary: pip install imageio-ffmpeg (the video extra)")
    import subprocess

    mp4 = tmp_path / "run.mp4"
    run_ok(["animate", env["out"], "--out", mp4, "--fps", "5", "--dpi", "40"], capsys)
    probe = subprocess.run([exe, "-i", str(mp4)], capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "5 fps" in probe
    assert "Duration: 00:00:02.20" in probe  # 11 frames (steps 0–8, 10, 12) at 5 per second


def test_animate_refuses_bad_input_with_one_line(env, tmp_path, capsys, monkeypatch):
    from lossmap.trajectory import animation

    assert "suffix" in run_fail(["animate", env["out"], "--out", tmp_path / "run.avi"], capsys)
    monkeypatch.setattr(animation, "find_ffmpeg", lambda: None)
    assert "imageio-ffmpeg" in run_fail(["animate", env["out"], "--out", tmp_path / "run.mp4"], capsys)
    plain = tmp_path / "plain.nc"
    assert main(["surface", "--model", env["model"], "--data", env["data"], "--x", "-1:1:3", "--y", "-1:1:3",
                 "--out", str(plain)]) == 0
    capsys.readouterr()
    assert "holds no trajectory" in run_fail(["animate", plain, "--out", tmp_path / "run.gif"], capsys)
    assert "'nope'" in run_fail(["animate", env["out"], "--out", tmp_path / "run.gif", "--metric", "nope"], capsys)


def test_report_has_a_step_slider_whose_frames_grow_the_path(env, tmp_path, capsys):
    from lossmap.plot.interactive import landscape_figures

    ds = store.load(env["out"])
    paths = read_paths(ds)
    steps = np.unique(np.concatenate([p.steps for p in paths]))
    figs = landscape_figures(ds, title="traj")
    for key in ("contour", "surface"):
        fig = figs[key]
        (slider,) = fig.layout.sliders
        assert [float(s.label) for s in slider.steps] == steps.tolist() and slider.active == steps.size - 1
        assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
        assert len(fig.frames) == steps.size
        sgd_path = fig.data[min(fig.frames[0].traces)]  # the first path trace: SGD, all checkpoints
        assert np.allclose(sgd_path.x, paths[0].coords[:, 0]) and np.allclose(sgd_path.y, paths[0].coords[:, 1])
        if key == "surface":  # lifted to the plane's value at each projection
            assert np.allclose(sgd_path.z, np.clip(paths[0].plane["loss"], None, max(sgd_path.z)))
        for frame, t in zip(fig.frames, steps):
            shown = frame.data[0]  # SGD's path up to step t
            np.testing.assert_allclose(shown.x, paths[0].coords[paths[0].steps <= t, 0])
            adam = frame.data[3]
            np.testing.assert_allclose(adam.x, paths[1].coords[paths[1].steps <= t, 0])
            np.testing.assert_allclose(frame.data[4].x, paths[1].coords[paths[1].steps <= t, 0][-1:])  # newest
    page = tmp_path / "report.html"
    run_ok(["report", env["out"], "--out", page], capsys)
    html = page.read_text(encoding="utf-8")
    assert html.count("Plotly.addFrames(") == 2  # the contour map and the surface
    assert "Plotly.animate(" not in html  # it does not start playing by itself


# ---- bad run folders -----------------------------------------------------------------------------------------


def _args(env, *runs, out=None):
    return ["trajectory", *runs, "--model", env["model"], "--data", env["data"], "--points", "3",
            "--out", out or env["root"] / "bad.nc"]


def _copy(src, dst, keep=None):
    dst.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    entries = manifest["checkpoints"] if keep is None else manifest["checkpoints"][:keep]
    for e in entries:
        (dst / e["file"]).write_bytes((src / e["file"]).read_bytes())
    (dst / "manifest.json").write_text(json.dumps({**manifest, "checkpoints": entries}))
    return dst


def test_bad_run_folders_are_one_line_errors(env, tmp_path, capsys):
    sgd = env["root"] / "sgd"
    assert "does not exist" in run_fail(_args(env, tmp_path / "nowhere"), capsys)
    (tmp_path / "empty").mkdir()
    assert "no manifest.json" in run_fail(_args(env, tmp_path / "empty"), capsys)
    no_manifest = _copy(sgd, tmp_path / "no-manifest")
    (no_manifest / "manifest.json").unlink()
    assert "no manifest.json" in run_fail(_args(env, no_manifest), capsys)
    listed_none = _copy(sgd, tmp_path / "listed-none", keep=0)
    assert "lists no checkpoints" in run_fail(_args(env, listed_none), capsys)
    two = _copy(sgd, tmp_path / "two", keep=2)
    assert "at least 3" in run_fail(_args(env, two), capsys)

    mixed = _copy(sgd, tmp_path / "mixed")  # one checkpoint of another architecture
    torch.manual_seed(1)
    wide = load_model(f"{env['root'] / 'nets.py'}:wider")
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(mixed / "step-000000004.safetensors"))
    msg = run_fail(_args(env, mixed), capsys)
    assert "step-000000004" in msg and "one architecture" in msg
    extra = _copy(sgd, tmp_path / "extra")  # a checkpoint with one tensor more
    state = load_file(str(extra / "step-000000006.safetensors"))
    save_file({**state, "scale": torch.ones(3)}, str(extra / "step-000000006.safetensors"))
    assert "adds scale" in run_fail(_args(env, extra), capsys)
    missing = _copy(sgd, tmp_path / "missing")
    (missing / "step-000000008.safetensors").unlink()
    assert "step-000000008" in run_fail(_args(env, missing), capsys)
    broken = _copy(sgd, tmp_path / "broken")
    (broken / "manifest.json").write_text("{not json")
    assert "damaged" in run_fail(_args(env, broken), capsys)

    wide_run = tmp_path / "wide-run"
    train(wide_run, f"{env['root'] / 'nets.py'}:wider", env["x"], env["y"], "sgd", steps=4)
    assert "does not match run" in run_fail(_args(env, sgd, wide_run), capsys)  # two architectures in one frame
    args = _args(env, wide_run)
    assert "wider" not in args[args.index("--model") + 1]
    msg = run_fail(args, capsys)  # the model does not fit the run
    assert "0.weight" in msg or "size" in msg


def test_bad_options_are_one_line_errors(env, tmp_path, capsys):
    sgd = env["root"] / "sgd"
    assert "--labels" in run_fail(_args(env, sgd, "--labels", "a", "b"), capsys)
    assert "--points" in run_fail(_args(env, sgd) + ["--points", "1"], capsys)
    assert "--margin" in run_fail(_args(env, sgd) + ["--margin", "-1"], capsys)
    assert "x axis" in run_fail(_args(env, sgd) + ["--x", "1:2"], capsys)
    # a file of other runs is refused before anything is computed
    msg = run_fail(_args(env, env["root"] / "adam", out=env["out"]), capsys)
    assert "holds the trajectory of" in msg and "--overwrite" in msg


_PROBE = """<script>
window.addEventListener('load', function () {
  var gd = document.getElementById('%s'), out = document.createElement('pre');
  out.id = 'probe'; document.body.appendChild(out);
  function path() { return gd.data[%d].x.length; }
  setTimeout(function () {
    out.textContent = 'before ' + path();
    Plotly.animate(gd, ['step %s'], {mode: 'immediate', frame: {duration: 0, redraw: false}, transition: {duration: 0}});
    setTimeout(function () { out.textContent += ' after ' + path(); }, 2000);
  }, 500);
});
</script>"""


@pytest.mark.slow
def test_moving_the_slider_in_a_browser_shortens_the_path(env, tmp_path, capsys):
    """Headless Chromium: the report's contour map shows the whole path, and animating to a frame (what the
    slider does) leaves only the checkpoints up to that step."""
    import shutil
    import subprocess

    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it: tests/ensure_chromium.sh)")
    from lossmap.plot.interactive import landscape_figures

    ds = store.load(env["out"])
    first = min(landscape_figures(ds)["contour"].frames[0].traces)  # SGD's path trace
    page = tmp_path / "report.html"
    run_ok(["report", env["out"], "--out", page], capsys)
    html = page.read_text(encoding="utf-8").replace("</body>", _PROBE % ("lossmap-plot-2", first, "4") + "</body>")
    page.write_text(html, encoding="utf-8")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                           "--enable-unsafe-swiftshader", "--no-first-run", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">before (\d+) after (\d+)</pre>', proc.stdout)
    assert found, proc.stdout[-500:]
    assert (int(found.group(1)), int(found.group(2))) == (7, 3)  # SGD: steps 0…12 by 2; up to step 4: 0, 2, 4


def test_commands_that_only_read_files_do_not_import_torch(env, tmp_path):
    """Drawing a stored landscape or trajectory needs xarray and matplotlib; importing torch would add seconds
    to every plot, report and animation."""
    code = textwrap.dedent(f"""
        import sys
        from lossmap.cli import main
        traj = {str(env['out'])!r}
        for argv in (["plot", traj, "--kind", "trajectory", "--out", "t.png"], ["animate", traj, "--out", "t.gif"],
                     ["report", traj, "--out", "t.html"], ["info", traj], ["plot", traj, "--out", "all"],
                     ["export", traj, "--format", "vtu", "--out", "t.vtu"]):
            assert main(argv) == 0, argv
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
