# irpo-jax developer commands. `make test` and `make demo` create .venv once (Python 3.11+).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Two pytest-xdist workers overlap the tests' XLA compiles (mostly one thread each); the grouping
# of tests into units is in tests/conftest.py. PYTEST_XDIST= runs the suite in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile

.PHONY: test lint format demo venv bench clean browser archivers reproduce reproduce-demo

# Reinstall when the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[torch,test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) lint browser archivers
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The house rules the linter can check ([tool.ruff] in pyproject.toml: pyflakes, pycodestyle,
# import order, bugbear, pyupgrade) and the formatter's layout; `make format` applies the latter.
lint: $(STAMP)
	$(VENV)/bin/ruff check irpo_jax torch_bridge tests benchmarks configs
	$(VENV)/bin/ruff format --check irpo_jax torch_bridge tests benchmarks configs

format: $(STAMP)
	$(VENV)/bin/ruff format irpo_jax torch_bridge tests benchmarks configs

# The comparison page's browser test (tests/test_compare.py) renders it in headless Chromium:
# installed from the distribution's packages when missing and apt-get can (root, e.g. CI);
# otherwise that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1 \
	  || { if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	         echo "installing chromium (apt-get) for the comparison page's browser test"; \
	         (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	           || echo "warning: could not install chromium; its browser test will be skipped"; \
	       else echo "note: no Chromium and no apt-get as root: the browser test will be skipped"; fi; }

# prepare reads 7z and rar archives (WED ships as a .rar) with bsdtar; its tests of those formats
# are skipped without it. Installed like Chromium above when missing and apt-get can.
archivers:
	@command -v bsdtar >/dev/null 2>&1 \
	  || { if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	         echo "installing bsdtar (libarchive-tools) for prepare's 7z/rar tests"; \
	         (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libarchive-tools >/dev/null) \
	           || echo "warning: could not install libarchive-tools; prepare's 7z/rar tests will be skipped"; \
	       else echo "note: no bsdtar and no apt-get as root: prepare's 7z/rar tests will be skipped"; fi; }

# The whole product on the built-in demo data: supervised AdaIR -> IRPO GRPO post-training (which
# first mines the hard 30 % with the supervised model) -> evaluate before/after. Outputs under runs/demo_*.
DEMO_CFG := configs/allinone5.py
demo: $(STAMP)
	rm -rf runs/demo_supervised runs/demo_grpo runs/demo_eval runs/demo_mined.*  # its own outputs: start afresh
	$(PY) -m irpo_jax.data.demo --out demo_data --overwrite
	$(PY) -m irpo_jax.train --config $(DEMO_CFG):supervised,demo --workdir runs/demo_supervised
	$(PY) -m irpo_jax.train --config $(DEMO_CFG):demo --workdir runs/demo_grpo \
	    --config.model.init_from=runs/demo_supervised/model
	$(PY) -m irpo_jax.evaluate --config $(DEMO_CFG):demo --checkpoint runs/demo_supervised/model \
	    --out runs/demo_eval/before --save_images
	$(PY) -m irpo_jax.evaluate --config $(DEMO_CFG):demo --checkpoint runs/demo_grpo/model \
	    --out runs/demo_eval/after --save_images
	$(PY) -m irpo_jax.compare runs/demo_eval/before runs/demo_eval/after --out runs/demo_eval/compare
	$(PY) -m irpo_jax.demo_report runs

# The reproduction recipe (README "Reproducing IRPO's tables in one command"): prepare -> convert
# --verify -> evaluate AdaIR against the published row -> mine -> post-train -> evaluate -> page.
DOWNLOADS ?=
CHECKPOINT ?=
reproduce: $(STAMP)
	$(PY) -m irpo_jax.reproduce --downloads "$(DOWNLOADS)" --checkpoint "$(CHECKPOINT)"

reproduce-demo: $(STAMP)
	$(PY) -m irpo_jax.reproduce --demo --runs runs/reproduce_demo

bench: $(STAMP)
	$(PY) benchmarks/adair_speed.py --markdown

clean:
	rm -rf $(VENV) .cache .pytest_cache *.egg-info
