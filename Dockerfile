# GPU container for tuner-app. The base tag matches the TensorFlow that pyproject.toml pins (>=2.21).
#   docker build -t tuner-app .
#   docker run --gpus all -v "$PWD/tuning_dirs:/work/tuning_dirs" -v /path/to/mnist:/data:ro \
#       tuner-app search --data /data
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/tuner-app
COPY pyproject.toml README.md ./
COPY tuner_app ./tuner_app
# TensorFlow comes from the base image; pip keeps it because it satisfies the pin. Ray (the [ray]
# extra) lets the same image run the search on a Ray cluster (deploy/kubernetes/rayjob.yaml).
# DL3013 takes the project itself (".[ray]") for an unpinned package; its pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir ".[ray]" \
    && useradd --create-home --uid 1000 tuner \
    && mkdir -p /work/tuning_dirs \
    && chown -R tuner:tuner /work

USER 1000:1000
WORKDIR /work
VOLUME ["/work/tuning_dirs"]
HEALTHCHECK --interval=5m --timeout=30s CMD ["tuner-app", "--help"]
ENTRYPOINT ["tuner-app"]
CMD ["--help"]
