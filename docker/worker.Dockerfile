# The GPU worker: CUDA PyTorch, the models loaded once per process. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t soundedit-worker .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python is 3.12; wordnet-base serves `soundedit train`'s prompt augmentation.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv libsndfile1 wordnet-base \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY cli ./cli
RUN pip install '.[worker]'
RUN useradd --create-home soundedit && mkdir -p /data && chown soundedit /data
USER soundedit
ENV SOUNDEDIT_STORAGE_ROOT=/data/storage SOUNDEDIT_MODEL_CACHE=/data/models SOUNDEDIT_DEVICE=cuda
# Weights are pulled once into the shared volume: docker compose run worker soundedit models pull ffhq
CMD ["soundedit", "worker"]
