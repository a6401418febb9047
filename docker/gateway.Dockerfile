# syntax=docker/dockerfile:1
# The recommendation gateway: `python -m gateway` (FastAPI on RECSYS_GATEWAY_PORT, the optional
# gRPC front end on RECSYS_GATEWAY_GRPC_PORT). Build context = the repository root:
#
#   docker build -f docker/gateway.Dockerfile -t recsys/gateway .
#
# Only the gateway's runtime dependencies (docker/requirements-gateway.txt, no torch/DALI/Triton
# server) and only the packages it imports: gateway/, feature_service/ and features/ (which
# holds the serving contract, features/contract.py). docker/gateway.Dockerfile.dockerignore (read by BuildKit
# in place of a root .dockerignore) keeps everything else out of the build context.
# The model repository is mounted at /models at run time (the gateway reads catalog.json and
# serving.json of the newest retrieve version there); nothing model-specific is baked in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships manylinux wheels for CPython 3.11: no compiler in the image.
COPY docker/requirements-gateway.txt /tmp/requirements.txt
RUN python -m pip install --only-binary=:all: -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

RUN groupadd --system --gid 10001 recsys \
 && useradd --system --uid 10001 --gid recsys --no-create-home --home-dir /app \
      --shell /usr/sbin/nologin recsys

WORKDIR /app
COPY features/ features/
COPY feature_service/ feature_service/
COPY gateway/ gateway/
COPY docker/healthcheck.py healthcheck.py
# Byte-compile as root (the code stays read-only for the service user).
RUN python -m compileall -q /app

# Inside a container the gateway must listen on every interface (its own default is 127.0.0.1).
# Everything else comes from RECSYS_GATEWAY_* / RECSYS_FEATURES_* at run time (docker/compose.yaml).
ENV RECSYS_GATEWAY_HOST=0.0.0.0 \
    RECSYS_GATEWAY_PORT=8080 \
    RECSYS_GATEWAY_MODEL_REPOSITORY=/models

# Numeric, so that "runAsNonRoot"-style checks can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 50051

# Liveness only (/healthz): /readyz also fails while Triton is down, when the gateway still answers
# from its trending/popular fallback, so it is for monitoring rather than for restarting.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "gateway"]

# Exec form: python is PID 1 and gets SIGTERM; uvicorn drains and the lifespan closes the
# Kafka producer, the store and the Triton channel.
CMD ["python", "-m", "gateway"]
