# syntax=docker/dockerfile:1
# bedrock-gateway container image.
#
#   docker build -t bedrock-gateway .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -v "$PWD/config/compose.yaml:/etc/bedrock-gateway/gateway.yaml:ro" bedrock-gateway
#
# The same image runs the simulator: `docker run bedrock-gateway simulator --host 0.0.0.0`.
# The configuration is not baked in: mount it at /etc/bedrock-gateway/gateway.yaml (compose) or
# from a ConfigMap (deploy/kubernetes). Secrets come from the environment, never from the image.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the project's wheel and the wheels of its runtime dependencies ----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild this stage.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# `pip wheel .` builds bedrock_gateway-*.whl and collects a wheel for every runtime dependency
# (never the [dev] extras), so the final stage installs offline from /wheels.
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: the wheels installed into a clean interpreter, run as an unprivileged user ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="bedrock-gateway" \
      org.opencontainers.image.description="Rate-limiting, quota-aware HTTP gateway in front of Amazon Bedrock Runtime" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheels are bind-mounted for this one step, so they add no layer to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/bedrock_gateway-*.whl \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/bedrock-gateway

# Numeric ids, so Kubernetes' runAsNonRoot can verify the user without /etc/passwd.
USER 10001:10001
WORKDIR /tmp

EXPOSE 8080

# Liveness through the stdlib (slim images have no curl). It assumes the default port 8080 over
# plain HTTP; a config that moves the port or turns on server.tls needs --health-cmd adjusted.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2)"]

ENTRYPOINT ["bedrock-gateway"]
CMD ["serve", "--config", "/etc/bedrock-gateway/gateway.yaml", "--host", "0.0.0.0"]
