# irpo-jax developer commands. `make test` and `make demo` create .venv once (Python 3.11+).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo venv bench clean

# Reinstall when the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The built-in demo data set (the full demo pipeline grows with the training issues).
demo: $(STAMP)
	$(PY) -m irpo_jax.data.demo --out demo_data --overwrite

bench: $(STAMP)
	$(PY) benchmarks/adair_speed.py --markdown

clean:
	rm -rf $(VENV) .cache .pytest_cache *.egg-info
