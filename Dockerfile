# syntax=docker/dockerfile:1
# One image for every dropgate function. The Knative Service picks the function with
# FUNCTION_SOURCE (functions/<name>/main.py); FUNCTION_TARGET is `handle` for all of them.
# Runs as a numeric non-root user on a read-only root filesystem: nothing is written outside
# /tmp (an emptyDir in the manifests).

# The base of both stages, pinned by digest: a rebuild gets the same bytes, and a tag moved
# upstream cannot slip a different image in. This is the multi-arch index digest of
# python:3.11-slim as published in two independent public Dockerfiles; it was not re-checked
# against Docker Hub (unreachable from where it was written). To check or refresh it (after a
# Debian or Python security release), take the index digest (the top-level "Digest:") from
#   docker buildx imagetools inspect python:3.11-slim
# and replace it here; tests/test_image.py insists on a digest.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# The product only: the event contract (events/) and the library (shared/). The local stack and
# dev auth (local-dev/, the dropgate-dev project) never enter the image. Runtime dependencies only.
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY events ./events
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY functions /app/functions
RUN /opt/venv/bin/python -m compileall -q /app/functions

FROM ${PYTHON_IMAGE}
# PYTHONDONTWRITEBYTECODE: the bytecode was compiled at build time; never write at runtime.
# HOME and XDG_RUNTIME_DIR point at /tmp: gunicorn (under functions-framework) puts its control
# socket there, and no library gets to write into a read-only home.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_RUNTIME_DIR=/tmp \
    PORT=8080 \
    FUNCTION_TARGET=handle
RUN groupadd --system --gid 10001 dropgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dropgate
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# functions-framework reads FUNCTION_SOURCE, FUNCTION_TARGET and PORT (set by Knative) itself;
# they are spelled out so the command says what runs.
CMD ["/bin/sh", "-c", "exec python -m functions_framework --source \"${FUNCTION_SOURCE:?set FUNCTION_SOURCE to functions/<name>/main.py}\" --target \"${FUNCTION_TARGET}\" --port \"${PORT}\""]
