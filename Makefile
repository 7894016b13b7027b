# One install, one demo, one test command. Everything lands in .venv; nothing global.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv demo test system-deps lint bench firmware soak soak-1000 fuzz clean

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/machi demo

# the tests also talk to real peers from Debian: coap-client, chromium, mosquitto, postgresql
system-deps: tools/system-deps.sh
	bash tools/system-deps.sh

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway cloud tools hil_tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# the firmware bundle (.mpy + manifest of hashes) for an ESP32; BOARD=unix for emulated nodes
BOARD ?= esp32
firmware: $(STAMP)
	$(BIN)/machi build --board $(BOARD) --out build/firmware-$(BOARD)

# the long soak, by hand (~10 min): 100 emulated nodes, network and process faults
SOAK ?= hil_tests/scenarios/soak-100.json
soak: $(STAMP)
	$(BIN)/python -m machi_tools.scenario $(SOAK)

# 1,000 emulated nodes, 50 per MicroPython process (firmware/multi.py), by hand (~12 min)
soak-1000: $(STAMP)
	nice -n 10 $(BIN)/python -m machi_tools.scenario hil_tests/scenarios/soak-1000.json

# the parsers fuzzed by hand (issue #8): 100k examples each (MACHI_FUZZ_EXAMPLES=n), hours
fuzz: $(STAMP)
	MACHI_FUZZ=long $(BIN)/python -m pytest -q --timeout=0 gateway/tests/test_fuzz_parsers.py \
		cloud/tests/test_fuzz_batch.py firmware/tests/test_fuzz_firmware.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
