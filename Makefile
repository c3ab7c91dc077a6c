# The two commands of the README. Both build the virtual environment from nothing (only
# Python 3.10+ is needed) and are idempotent: a second run reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.elth-installed
DEMO_OUT ?= demo-out

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# timm, tensorboard: the optional extras, installed so that their tests run (tests/test_timm.py and
	# tests/test_tensorboard.py skip without them).
	$(BIN)/python -m pip install --quiet -e '.[test,timm,tensorboard]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20

demo: $(STAMP)
	$(BIN)/elth demo --out-dir $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
