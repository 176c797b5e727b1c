# syntax=docker/dockerfile:1.7
# The submit API image: slim Python, no torch, runs as an unprivileged user.
# The same image runs the migrations, the sweeper and the webhook sender (all CPU-only).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t internvl-jobs-api .
# Where PyPI lacks a pinned release, name a local index or wheel folder (mounted into the build):
#   --build-arg PIP_EXTRA_INDEX_URL=file:///opt/pypi/simple (scripts/containers does this).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Empty by default: pip reads only PyPI. Build arguments reach pip as environment variables.
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
# Only the packages these processes import: no worker/, bench/ or devtools/ code.
COPY core ./core
COPY api ./api
COPY sender ./sender
COPY cli ./cli
# constraints.txt pins every package the tests ran with; the [api] extra pulls no torch,
# and the image holds no worker, benchmark or dev-tool code (checked after the install).
RUN pip install --constraint constraints.txt ".[api]" \
    && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'worker', 'bench', 'devtools')))"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INTERNVL_JOBS_LOG_JSON=true
RUN groupadd --system --gid 10001 internvl \
    && useradd --system --uid 10001 --gid internvl --home-dir /app --shell /usr/sbin/nologin internvl
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# `internvl-jobs migrate` finds alembic.ini and alembic/ in the working directory.
COPY alembic.ini ./
COPY alembic ./alembic
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["internvl-jobs", "api", "--host", "0.0.0.0", "--port", "8000", "--forwarded-allow-ips", "*"]
