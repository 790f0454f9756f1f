# syntax=docker/dockerfile:1
# bedrock-gateway container image.
#
#   docker build -t bedrock-gateway .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -v "$PWD/my-gateway.yaml:/etc/bedrock-gateway/gateway.yaml:ro" bedrock-gateway
#
# The same image runs the simulator: `docker run bedrock-gateway simulator --host 0.0.0.0`.
# The configuration is not baked in: mount it at /etc/bedrock-gateway/gateway.yaml (compose) or
# from a ConfigMap (deploy/kubernetes). Secrets come from the environment, never from the image.
#
# Layer caching: the runtime dependencies are built (stage `deps`) from pyproject.toml alone and
# installed in a layer of their own before the gateway's source is copied anywhere, so a change
# to gateway/ rebuilds only the `app` stage and the image's last layer.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- deps: a wheel for every runtime dependency, from pyproject.toml only --------------------
FROM ${PYTHON_IMAGE} AS deps

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
# [project].dependencies as a requirements file (never the [dev] extras), then their wheels.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/src/requirements.txt', 'w').write(''.join(d + chr(10) for d in deps))" \
    && pip wheel --wheel-dir /wheels -r /src/requirements.txt \
    && cp /src/requirements.txt /wheels/requirements.txt

# ---- app: the project's own wheel, without its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild this stage.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-deps --wheel-dir /app-wheel .

# ---- runtime: the wheels installed into a clean interpreter, run as an unprivileged user ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="bedrock-gateway" \
      org.opencontainers.image.description="Rate-limiting, quota-aware HTTP gateway in front of Amazon Bedrock Runtime" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/bedrock-gateway

# The wheels are bind-mounted for these steps, so they add no layer to the image. Dependencies
# first: this layer is reused until pyproject.toml changes.
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels -r /wheels/requirements.txt
RUN --mount=type=bind,from=app,source=/app-wheel,target=/app-wheel \
    pip install --no-index --no-deps /app-wheel/bedrock_gateway-*.whl

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
