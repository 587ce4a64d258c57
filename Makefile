# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch/torchvision: plain requirements; on the reference machine they resolve to
# the locally available torch 2.14.1 / torchvision 0.29.1 pair.
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml setup.py src/stvh/index/_hamming.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq -e '.[dev,milvus]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stvh demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
