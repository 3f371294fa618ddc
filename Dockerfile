# syntax=docker/dockerfile:1
#
# The Keel image: one image for every Keel process. The command picks the process:
#   docker run keel api        (default)   docker run keel worker
#   docker run keel migrate                docker run keel telegram
# Everything is configured through environment variables (KEEL_*, TEMPORAL_*,
# ANTHROPIC_*); see docker-compose.temporal.yml for a complete deployment.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: resolve the locked dependencies and install Keel into /app/.venv ---------
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

RUN pip install "uv==${UV_VERSION}"

WORKDIR /app

# Dependencies first, from the lockfile alone, so this layer is reused until
# pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then Keel itself, installed as a regular (non-editable) package so the runtime stage
# needs only the virtual environment, not the source tree.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KEEL_HOME=/home/keel/.keel \
    KEEL_API_HOST=0.0.0.0 \
    KEEL_API_PORT=8000 \
    KEEL_LOG_FORMAT=json

RUN groupadd --system --gid 10001 keel \
    && useradd --system --uid 10001 --gid keel --create-home --home-dir /home/keel \
        --shell /usr/sbin/nologin keel

# Owned by root and read-only for the keel user: the code cannot be changed at run time.
COPY --from=build /app/.venv /app/.venv

WORKDIR /app
USER keel

# Fail the build, not the deployment, if the console script cannot even start.
RUN keel --help > /dev/null

EXPOSE 8000
ENTRYPOINT ["keel"]
CMD ["api"]
