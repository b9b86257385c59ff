"""The package as users get it: ``python -m build`` makes an sdist and a wheel that ``twine check`` accepts,
and the wheel installed into a fresh virtual environment outside the repository imports every public name and
runs ``lossmap demo --quick``.

torch is installed into that environment from the local CPU wheel of the version running these tests
(``$TORCH_WHEELS``, default /opt/wheels), never resolved from an index: an unpinned torch would download GBs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# run inside the fresh environment: import every module of the installed package and every name it exports
IMPORT_ALL = r"""
import importlib, pkgutil, sys
import lossmap
from importlib.metadata import version
assert lossmap.__version__ == version("lossmap"), (lossmap.__version__, version("lossmap"))
assert "site-packages" in lossmap.__file__, lossmap.__file__
names = 0
for name in lossmap.__all__:
    getattr(lossmap, name); names += 1
for info in pkgutil.walk_packages(lossmap.__path__, "lossmap."):
    if info.name.endswith("__main__"):  # python -m lossmap: running it is the command line itself
        continue
    module = importlib.import_module(info.name)
    for name in getattr(module, "__all__", []):
        getattr(module, name); names += 1
print("imported", names, "names from", lossmap.__file__)
"""


def _run(cmd: list, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _local_torch_wheel() -> Path:
    import torch

    folder = Path(os.environ.get("TORCH_WHEELS", "/opt/wheels"))
    public = torch.__version__.split("+")[0]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(folder.glob(f"torch-{public}*-{tag}-*.whl")) if folder.is_dir() else []
    if not found:
        pytest.skip(f"no local wheel of torch {public} for {tag} in {folder}: the test never downloads torch")
    return found[0]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel ``python -m build`` makes from this checkout (the wheel built from the sdist)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    return out


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check(dist, tmp_path):
    pytest.importorskip("twine")
    import lossmap

    wheel = dist / f"lossmap-{lossmap.__version__}-py3-none-any.whl"
    sdist = dist / f"lossmap-{lossmap.__version__}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    _run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist], cwd=tmp_path)
    import tarfile
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"lossmap-{lossmap.__version__}.dist-info/METADATA").decode()
    assert "lossmap/cli.py" in names and "lossmap/data/sets.py" in names and "lossmap/curvature/__init__.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert f"Version: {lossmap.__version__}" in meta and "License-Expression: MIT" in meta
    assert "Project-URL: Documentation" in meta and "Classifier: Programming Language :: Python :: 3" in meta
    with tarfile.open(sdist) as tf:
        members = tf.getnames()
    assert f"lossmap-{lossmap.__version__}/LICENSE" in members and f"lossmap-{lossmap.__version__}/CHANGELOG.md" in members


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_imports_everything_and_runs_the_quick_demo(dist, tmp_path):
    torch_wheel = _local_torch_wheel()
    wheel = next(dist.glob("lossmap-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, lossmap_cmd = venv / "bin" / "python", venv / "bin" / "lossmap"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    _run([python, "-m", "pip", "install", "-q", torch_wheel], cwd=tmp_path, env=env, timeout=900)
    _run([python, "-m", "pip", "install", "-q", wheel], cwd=tmp_path, env=env, timeout=900)
    work = tmp_path / "elsewhere"  # outside the repository: nothing of the checkout is importable
    work.mkdir()
    proc = _run([python, "-c", IMPORT_ALL], cwd=work, env=env)
    assert proc.stdout.startswith("imported ") and int(proc.stdout.split()[1]) > 100
    proc = _run([lossmap_cmd, "demo", "--quick", "--out", "demo"], cwd=work, env=env, timeout=900)
    for name in ("trained.safetensors", "plane.nc", "plane_contour.png", "report.html", "summary.txt"):
        assert (work / "demo" / name).stat().st_size > 0, name
    accuracy = float(next(line for line in (work / "demo" / "summary.txt").read_text().splitlines()
                          if line.startswith("test_accuracy = ")).split("=")[1])
    assert accuracy > 0.9
