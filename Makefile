# The README's two commands. Each creates .venv on first use and installs the extra
# with constraints.txt (the tested torch CPU wheel), again when either file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test bench demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	touch $@

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[demo]'
	touch $@

# the tests, the benchmarks once each without timing, the doctests in fastconv/ and
# the notebooks (testpaths in pyproject.toml)
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest --benchmark-disable --doctest-modules --nbmake

bench: $(VENV)/.installed-bench
	$(BIN)/python -m fastconv bench

demo: $(VENV)/.installed-demo
	$(BIN)/python -m fastconv demo
