# fluxserve for NVIDIA GPU hosts. Build: docker build -t fluxserve .
# Run (weights in the host's Hugging Face cache, data in a volume):
#   docker run --gpus all -p 8000:8000 -e FLUXSERVE_API_KEYS=change-me \
#     -v ~/.cache/huggingface:/models/huggingface -v fluxserve-data:/data fluxserve
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# XDG_CACHE_HOME: caches (the tiny model of `weights: auto`) in the /data volume, not in the
# container's own layer, which a new container starts without.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/fluxserve \
    PATH=/opt/fluxserve/bin:$PATH \
    HF_HOME=/models/huggingface \
    HF_HUB_OFFLINE=1 \
    XDG_CACHE_HOME=/data/cache \
    FLUXSERVE_DATA_DIR=/data \
    FLUXSERVE_HOST=0.0.0.0 \
    FLUXSERVE_PORT=8000

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/fluxserve

WORKDIR /app
# Dependencies first (cached layer): torch's default Linux wheel bundles the CUDA runtime.
COPY pyproject.toml README.md ./
RUN pip install --upgrade pip \
 && pip install "torch>=2.5" \
 && mkdir -p server pipelines && touch server/__init__.py pipelines/__init__.py \
 && pip install ".[quant,cluster]" \
 && pip uninstall -y fluxserve
COPY server ./server
COPY pipelines ./pipelines
COPY configs ./configs
RUN pip install --no-deps ".[quant,cluster]"

RUN useradd --create-home --uid 10001 fluxserve \
 && mkdir -p /data /models \
 && chown fluxserve:fluxserve /data /models
USER fluxserve

VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health-check | grep -qE '"status":"(READY|BUSY)"' || exit 1

CMD ["fluxserve", "serve", "--config", "/app/configs/flux-dev-80gb.yaml"]
