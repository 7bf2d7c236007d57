# The two commands a new machine needs: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)

MODULES := $(basename $(notdir $(wildcard library/*.py)))
PLAYBOOKS := $(wildcard playbooks/*.yml) deploy_int8.yml rollback.yml
SCENARIOS ?= lab default rollback failure canary lock faults fidelity

.PHONY: venv test unit unit-slow integration lint docs-check syntax ee-check molecule lab lab-down demo bench clean

# The Debian packages first (python3-venv, systemd-container, debootstrap...), only if one is missing.
$(VENV)/.installed: pyproject.toml requirements-apt.txt
	@xargs -a requirements-apt.txt dpkg -s >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive xargs -a requirements-apt.txt apt-get install -y -qq --no-install-recommends; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv lint docs-check syntax ee-check unit unit-slow integration molecule

unit: venv
	$(BIN)/pytest -q -m "not slow" tests/unit

# The report tasks through ansible-playbook on this machine and the page in headless Chromium.
unit-slow: venv
	$(BIN)/pytest -q -m slow tests/unit

# The AWX/AAP execution environment definition: ansible-builder writes its build context (no image).
ee-check: venv
	@ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT && \
	  $(BIN)/ansible-builder create -f execution-environment.yml -c "$$ctx" --output-filename Containerfile >/dev/null && \
	  test -s "$$ctx/Containerfile" && echo "ansible-builder create ok: execution-environment.yml"

# Real ansible-playbook runs on this machine: the deploy lock between runs, and the rollout's batches,
# failure counting and summary with stand-in roles on four local hosts; then, through ansible-runner,
# deploy, validate and rollback on the lab (brought up and reset by the tests; SARAI_LAB_INSTANCE honoured).
integration: venv
	$(BIN)/pytest -q tests/integration

lint: venv
	$(BIN)/ansible-lint --profile production --strict -q

docs-check: venv
	@for m in $(MODULES); do \
	  $(BIN)/ansible-doc -M library $$m >/dev/null || { echo "ansible-doc failed for $$m"; exit 1; }; \
	  echo "ansible-doc ok: $$m"; done

syntax: venv
	@for inv in inventory/production inventory/lab; do for p in $(PLAYBOOKS); do \
	  $(BIN)/ansible-playbook -i $$inv --syntax-check $$p >/dev/null || { echo "syntax-check failed: $$p with $$inv"; exit 1; }; \
	  done; echo "syntax-check ok with $$inv"; done

# One run over every scenario: the lab is created once and destroyed once (shared_state). Molecule
# names its state dir after the checkout's basename only, so two checkouts called `main` would share
# "the lab is created" and skip the create: the state dir is this checkout's own (logs are kept there).
export MOLECULE_EPHEMERAL_DIRECTORY ?= $(HOME)/.cache/molecule/sarai-deploy-$(shell printf %s "$(CURDIR)" | sha1sum | cut -c1-8)
molecule: venv
	$(BIN)/molecule test $(foreach s,$(SCENARIOS),-s $(s))

lab: venv
	$(BIN)/ansible-playbook -i inventory/lab playbooks/lab_up.yml

lab-down: venv
	$(BIN)/ansible-playbook -i inventory/lab playbooks/lab_down.yml

# The lab inventory's model, shape and validation inputs (inventory/lab/group_vars/all), so every
# README command that follows works on the same lab as written.
demo: venv
	$(BIN)/ansible-playbook -i inventory/lab playbooks/demo.yml

# Every benchmark in one run; each rewrites its own section of benchmarks/RESULTS.md.
# lab_deploy.py (sections c, d) needs the lab up: make lab (it says so when it is not).
# silero-vad's wheel is only its ONNX files here: --no-deps keeps its torch requirement out.
bench: venv
	$(BIN)/pip install --quiet --no-deps silero-vad==6.2.3
	$(BIN)/python benchmarks/streaming_engine.py --results benchmarks/RESULTS.md
	$(BIN)/python benchmarks/quantize_variants.py --results benchmarks/RESULTS.md
	$(BIN)/python benchmarks/fidelity_search.py --results benchmarks/RESULTS.md
	$(BIN)/python benchmarks/silero_bench.py --results benchmarks/RESULTS.md
	$(BIN)/python benchmarks/lab_deploy.py --results benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache
