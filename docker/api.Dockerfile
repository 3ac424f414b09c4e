# The HTTP API: slim, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t soundedit-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY cli ./cli
# Base dependencies only: the API never imports torch.
RUN pip install .
RUN useradd --create-home soundedit && mkdir -p /data && chown soundedit /data
USER soundedit
ENV SOUNDEDIT_STORAGE_ROOT=/data/storage SOUNDEDIT_MODEL_CACHE=/data/models
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["soundedit", "api", "--host", "0.0.0.0", "--port", "8000"]
