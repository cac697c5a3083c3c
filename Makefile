# Every target that needs .venv builds it first (make setup is idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUBS := $(VENV)/rp2-stubs
STAMP := $(VENV)/.setup-stamp
PORT ?=

.PHONY: setup test check demo sim flash hil bench trace clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	# Exact versions from constraints.txt; pyproject.toml holds the compatible ranges.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,plot,sim]'
	# RP2040 stubs in their own folder so they never shadow CPython's stdlib.
	$(BIN)/pip install -q --no-deps --target $(STUBS) micropython-rp2-rpi-pico-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2
	$(BIN)/micropython -c "import sys; print('micropython ok', sys.implementation.version)"
	touch $(STAMP)

test: setup
	rm -rf build/junit hil_report
	$(BIN)/python -m pytest -q -p no:cacheprovider tests --junitxml=build/junit/tests.xml
	$(MAKE) --no-print-directory check
	$(BIN)/python -m pytest -q -p no:cacheprovider hil_tests --hil-report=hil_report
	$(MAKE) --no-print-directory trace

# docs/traceability.md from docs/traceability.toml and the JUnit XML of the last `make test`.
trace: setup
	$(BIN)/python tools/trace.py

check: setup
	$(BIN)/python tools/check.py

demo: setup
	$(BIN)/python tools/demo.py

sim: setup
	$(BIN)/penctl sim

flash: setup
	$(BIN)/penctl $(if $(PORT),--port $(PORT)) flash

hil: setup
	$(BIN)/python -m pytest -v -p no:cacheprovider hil_tests $(if $(PORT),--pen-port $(PORT)) --hil-report=hil_report

bench: setup
	$(BIN)/python tools/bench.py --json bench.json

clean:
	rm -rf $(VENV) hil_report demo_out bench.json build
