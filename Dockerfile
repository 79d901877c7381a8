# The training image the manifests in k8s/ run: Python, TensorFlow + tf_keras, Ray Tune, distcb,
# and examples/ at /app/examples (k8s_train.py for the workers and the coordinator's callbacks,
# tune_asha.py for the RayJob). Minimal on purpose; it has not been built in this repository's
# CI (no Docker engine there). tests/k8s runs the manifests' commands against this file's
# WORKDIR and ENV instead.
#
#   docker build -t registry.example.com/distcb-train:latest .
#
# GPUs: start FROM an image with CUDA and install "distcb[keras]" with tensorflow[and-cuda].
FROM python:3.11-slim
# KubeRay's default probes on Ray pods run wget.
RUN apt-get update && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY distcb ./distcb
RUN pip install --no-cache-dir ".[keras,tune]"
COPY examples ./examples
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/app/examples TF_CPP_MIN_LOG_LEVEL=3
