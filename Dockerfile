# syntax=docker/dockerfile:1
# Images of the QIN stack (docker-compose.yml builds them). Targets:
#   serve  the scoring service, `python -m service`: the serve extra only (onnxruntime, no torch,
#          no pyarrow), with the contract/ and service/ packages alone. DEVICE=cpu:
#          onnxruntime on python:3.11-slim. DEVICE=gpu (the default here; docker-compose.yml asks
#          for cpu, deploy/docker-compose.gpu.yml for gpu): onnxruntime-gpu on NVIDIA's CUDA 13 +
#          cuDNN 9 runtime image, whose Python is Ubuntu 24.04's 3.12; the host needs driver >= 580.
#   train  CPU torch with the serve and load extras: the one-shot job that builds the demo
#          artifacts into the /models volume and loads the features into Redis
#          (deploy/build_demo_artifacts.sh runs `python -m service.features load`).
# Every venv is made by deploy/install.sh, as for the README's commands and CI. The model is not
# in the image: the service reads it from a volume (MODEL_PATH=/models/model.onnx).
#
#   docker build --target serve --build-arg DEVICE=cpu -t qin-service:cpu .
#   docker build --target serve -t qin-service:gpu .
#   docker build --target train -t qin-train .

ARG DEVICE=gpu
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# One Python base per device. A device's builder and runtime share it, so the venv's interpreter
# (a symlink) is the same path in both.
FROM ${CUDA_IMAGE} AS python-gpu
# Unpinned apt versions: the CUDA image tag pins the Ubuntu release, and pinned patch versions
# vanish from the archive with each security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM ${PYTHON_IMAGE} AS python-cpu

# ---------------------------------------------------------------------------------------------
# python-${DEVICE} is one of the two stages above (hadolint cannot resolve the variable).
# hadolint ignore=DL3006
FROM python-${DEVICE} AS serve-builder
ARG DEVICE
# Built for CUDA 13 and cuDNN 9, the GPU base image's; it replaces the CPU onnxruntime of the
# serve extra (both are the `onnxruntime` module).
ARG ONNXRUNTIME_GPU=onnxruntime-gpu==1.31.1
ENV VENV=/opt/venv PYTHON=python3
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/install.sh deploy/
COPY contract contract/
COPY service service/
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$DEVICE" = gpu ]; then export ONNXRUNTIME="$ONNXRUNTIME_GPU"; fi \
    && bash deploy/install.sh serve

# hadolint ignore=DL3006
FROM python-${DEVICE} AS serve
ENV VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_PATH=/models/model.onnx
RUN useradd --system --uid 10001 --user-group --no-create-home qin \
    && mkdir /models \
    && chown qin:qin /models
WORKDIR /app
COPY --from=serve-builder /opt/venv /opt/venv
# The editable install of the builder points at /app. The service imports contract/ (torch- and
# pyarrow-free) and nothing of model/ or export/ (tests/test_contract.py checks).
COPY contract contract/
COPY service service/
# Numeric, so that a runtime checking for non-root (Kubernetes runAsNonRoot) can tell.
USER 10001:10001
EXPOSE 8000
# Liveness only: readiness (model warmed, Redis live) is /readyz, which compose waits on.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.healthcheck", "/healthz"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS train
ENV VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEMO_DIR=/models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/install.sh deploy/
COPY contract contract/
COPY model model/
COPY export export/
COPY service service/
# torch==2.13.0 resolves to 2.13.0+cpu from PyTorch's CPU index (no CUDA libraries: the job
# trains on the CPU). The load extra because the job loads the features; the dev extra too,
# because deploy/demo.sh runs install.sh with train,serve,load,dev: with the same extras that run
# finds its stamp and installs nothing.
# TORCH_INDEX_URL empty: torch from pip's own configuration (a host without PyTorch's index).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && bash deploy/install.sh train,serve,load,dev
COPY deploy deploy/
RUN useradd --system --uid 10001 --user-group --create-home qin \
    && mkdir /models \
    && chown qin:qin /models
USER 10001:10001
CMD ["bash", "deploy/build_demo_artifacts.sh"]
