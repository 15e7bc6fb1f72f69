# syntax=docker/dockerfile:1
# The node agent (one per node, DaemonSet): works its node's LocalModelNode, launches download Jobs.
# Build from the repository root:  docker build -f docker/agent.Dockerfile -t localcache/agent:0.1.0 .
#
# All three images (manager, agent, download) share the same base image and the same install layers, so
# they share the layer cache and differ only in the entrypoint.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY localcache ./localcache
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-compile . && rm -rf /src

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
COPY cmd /app/cmd
# uid/gid 1000, the owner KServe's docs ask for on the models host directory.
RUN groupadd --gid 1000 localcache && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin localcache
USER 1000:1000
WORKDIR /app
ENTRYPOINT ["python", "/app/cmd/agent.py"]
