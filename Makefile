# Set-up is automatic: every target creates or reuses the local virtual environment.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=
# Where a CPU build of PyTorch may lie on disk; when one of the pinned version is there, use it
# (an unpinned torch would pull a multi-GB CUDA build).
TORCH_WHEELS ?= /opt/wheels
TORCH_LOCAL  ?= 2.13.0
TORCH_REQ    := $(if $(wildcard $(TORCH_WHEELS)/torch-$(TORCH_LOCAL)*.whl),torch==$(TORCH_LOCAL),)
STAMP   := $(VENV)/.installed

.PHONY: install demo test docs bench bench-trajectory bench-precision clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_REQ) -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lossmap demo --out lossmap-demo

test: $(STAMP)
	sh tests/ensure_chromium.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The site into site/, warnings as errors. The gallery takes its figures from lossmap-demo/ (make demo) when
# it is there, else from a quick demo run made once into build/docs/; the notebook is executed once and kept
# in build/docs/ until it or the package changes (docs/hooks.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# the Hessian contenders install without their dependencies, so that pip never replaces torch; what they
# import besides torch, numpy, scipy and tqdm is listed (backpack-for-pytorch, which would pull torchvision, is not
# imported by what the benchmark uses)
HESSIAN_CONTENDERS := hessian-eigenthings==1.0.0a5 curvlinops-for-pytorch==3.0.1 einops==0.8.2 einconv==0.1.0 \
	linear_operator==0.6.1 opt-einsum==3.4.0

bench: $(STAMP)
	$(PY) -m pip install -q --no-deps loss-landscapes==3.0.6
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) -m pip install -q --no-deps $(HESSIAN_CONTENDERS)
	$(PY) bench/hessian.py $(BENCH_HESSIAN_ARGS)
	$(PY) bench/precision.py $(BENCH_PRECISION_ARGS)

bench-trajectory: $(STAMP)
	$(PY) bench/trajectory.py $(BENCH_ARGS)

# evaluation to a stated precision against the full evaluation (seed CNN, 10,000 MNIST test images, 21×21)
bench-precision: $(STAMP)
	$(PY) bench/precision.py $(BENCH_PRECISION_ARGS)

clean:
	rm -rf lossmap-demo .pytest_cache site build/docs
