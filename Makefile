# `make test`, `make demo`, `make docs` (the site, into runs/site; warnings are errors). Both use one virtual environment in .venv,
# installed once (a stamp file makes the second run a no-op unless pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench lint docs results clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/structlearn learn --out runs/demo

bench: $(STAMP)
	$(PY) -m torch_structlearn.bench

results: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,repro]'
	$(PY) recipes/make_results.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check torch_structlearn tests recipes
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
