# Every target that needs .venv builds it first (make setup is idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUBS := $(VENV)/rp2-stubs
STAMP := $(VENV)/.setup-stamp
PORT ?=

.PHONY: setup test check demo sim flash hil bench trace clean lab-setup lab lab-stop hil-lab

# The labgrid lab (docs/lab.md): its own venv, because labgrid's pyserial-labgrid and penctl's
# pyserial install the same `serial` package.
LAB_VENV := .venv-lab
LAB_STAMP := $(LAB_VENV)/.setup-stamp
LAB_STATE ?= .lab
N ?= 3
CLOCK ?= fast
LAB := $(LAB_VENV)/bin/python lab/labctl.py

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

test: setup lab-setup
	rm -rf build/junit hil_report
	# Three workers on two cores: most tests wait on virtual pens and subprocesses. One file per
	# worker (loadfile): a file's fixtures and its MicroPython runs stay together.
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile tests --junitxml=build/junit/tests.xml
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

# ser2net from Debian's packages (the exporter serves each pen through it); CI runs as root.
lab-setup: setup $(LAB_STAMP)
	@test -x /usr/sbin/ser2net || test -x /usr/bin/ser2net || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq ser2net >/dev/null; \
	  else echo "ser2net is missing: sudo apt-get install ser2net"; exit 1; fi; }

$(LAB_STAMP): lab/requirements.txt lab/constraints.txt
	$(PYTHON) -m venv $(LAB_VENV)
	$(LAB_VENV)/bin/pip install -q --upgrade pip==25.3
	$(LAB_VENV)/bin/pip install -q -c lab/constraints.txt -r lab/requirements.txt
	touch $@

# A lab on loopback with N virtual pens (places pen-1..pen-N), until `make lab-stop`.
lab: lab-setup
	$(LAB) start --state $(LAB_STATE) --pens $(N) --clock $(CLOCK) --penctl $(BIN)/penctl

lab-stop:
	@if [ -x $(LAB_VENV)/bin/python ]; then $(LAB) stop --state $(LAB_STATE); else echo "no lab venv: nothing to stop"; fi

# The HIL suite on N places in parallel (one pytest-xdist worker per place). Uses the lab that
# `make lab` started; without one, starts a lab of N pens for the run and stops it afterwards.
hil-lab: lab-setup
	$(BIN)/python lab/hil_lab.py --lab-python $(LAB_VENV)/bin/python --state $(LAB_STATE) --pens $(N) \
	  --clock $(CLOCK) --penctl $(BIN)/penctl --report hil_report -- $(HIL_ARGS)

clean:
	rm -rf $(VENV) $(LAB_VENV) hil_report demo_out bench.json build
