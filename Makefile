# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch/torchvision: plain requirements; on the reference machine they resolve to
# the locally available torch 2.14.1 / torchvision 0.29.1 pair.
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean browser mutation

$(STAMP): pyproject.toml setup.py src/stvh/index/_hamming.c src/stvh/index/_mih.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq -e '.[dev,milvus]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stvh demo --out runs/demo

# The browser test (tests/test_serve_browser.py) drives Debian's chromium: install it when missing (as root,
# apt-get update first); a failure is tolerated and the test then skips with a one-line reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: chromium could not be installed; the browser test will skip"

test: $(STAMP) browser
	$(PY) -m pytest -q

# Mutation testing of the numeric core (mutmut; about an hour on 2 cores, not part of `make test`):
# figures per file in benchmarks/results/mutation.json and docs/testing.md. MODULES="losses.py" for one.
mutation: $(STAMP)
	$(PY) benchmarks/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache
