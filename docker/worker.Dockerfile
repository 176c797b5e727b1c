# syntax=docker/dockerfile:1.7
# The GPU worker image: CUDA 13.0 runtime on Ubuntu 24.04, matching the CUDA 13.0 build of
# torch 2.14.1 (its default wheel; it brings its own cuBLAS/cuDNN wheels and needs an NVIDIA
# driver >= 580 on the host). Runs as an unprivileged user; models are cached in /models.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t internvl-jobs-worker .
#   docker build -f docker/worker.Dockerfile --build-arg FLASH_ATTN=1 -t internvl-jobs-worker:fa2 .
# A CPU-only image: plain Debian or Ubuntu bases for both stages and torch's CPU wheel:
#   docker build -f docker/worker.Dockerfile --build-arg BUILD_IMAGE=debian:bookworm-slim \
#     --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg TORCH_FLAVOUR=cpu \
#     -t internvl-jobs-worker:cpu .

ARG CUDA_VERSION=13.0.2
ARG UBUNTU=ubuntu24.04
ARG BUILD_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU}
ARG BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}

# Build stage: the devel image has nvcc, needed only when flash-attn is compiled.
FROM ${BUILD_IMAGE} AS build
ARG FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3.post2
# flash-attn compiles for a long time; MAX_JOBS bounds its memory use (about 4 GB per job).
ARG MAX_JOBS=4
# cu130: PyPI's torch wheel (CUDA 13.0); cpu: the CPU wheels of torch and torchvision from
# PyTorch's own index (or a mirror of it, named by TORCH_CPU_INDEX_URL).
ARG TORCH_FLAVOUR=cu130
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty by default: pip reads only PyPI (see api.Dockerfile for local wheel folders).
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY core ./core
COPY worker ./worker
COPY cli ./cli
# Operators benchmark their own GPUs (`internvl-jobs bench engine`); it builds tiny presets.
COPY bench ./bench
COPY devtools ./devtools
# torch==2.14.1 from PyPI is the CUDA 13.0 build (its wheels pull nvidia-*-cu13 libraries);
# the +cpu build satisfies the same pin, sorts above it and pulls none of them. The CPU index
# joins the extra indexes already given (a local wheel folder stays in reach).
RUN case "$TORCH_FLAVOUR" in \
        cu130) cuda="13.0" ;; \
        cpu) cuda="None"; PIP_EXTRA_INDEX_URL="$TORCH_CPU_INDEX_URL $PIP_EXTRA_INDEX_URL" ;; \
        *) echo "TORCH_FLAVOUR must be cu130 or cpu" >&2; exit 2 ;; \
    esac \
    && PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL" pip install --constraint constraints.txt ".[worker]" \
    && python -c "import sys, torch; v = str(torch.version.cuda); assert v.startswith(sys.argv[1]), v" "$cuda"
RUN if [ "$FLASH_ATTN" = "1" ]; then \
        MAX_JOBS="$MAX_JOBS" pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models \
    INTERNVL_JOBS_LOG_JSON=true \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 internvl \
    && useradd --system --uid 10001 --gid internvl --home-dir /app --shell /usr/sbin/nologin internvl \
    && mkdir -p /models \
    && chown internvl:internvl /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
USER 10001:10001
# Hugging Face downloads land here: mount a volume so a restart does not download again.
VOLUME ["/models"]
# Probes and metrics: 9310 + device index (GPU 0 -> 9310); see docs/deployment.md.
EXPOSE 9310
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9310/livez', timeout=4)"]
CMD ["internvl-jobs", "worker", "--devices", "all"]
