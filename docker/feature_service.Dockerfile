# syntax=docker/dockerfile:1
# The feature service: `python -m feature_service`, a Kafka consumer-group member that keeps each
# user's real-time features in Redis (RECSYS_FEATURES_STORE=redis). Build context = the
# repository root:
#
#   docker build -f docker/feature_service.Dockerfile -t recsys/feature-service .
#
# Only its runtime dependencies (docker/requirements-features.txt) and the two packages it
# imports, feature_service/ and features/. docker/feature_service.Dockerfile.dockerignore keeps
# everything else out of the build context.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY docker/requirements-features.txt /tmp/requirements.txt
RUN python -m pip install --only-binary=:all: -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

RUN groupadd --system --gid 10001 recsys \
 && useradd --system --uid 10001 --gid recsys --no-create-home --home-dir /app \
      --shell /usr/sbin/nologin recsys

WORKDIR /app
COPY features/ features/
COPY feature_service/ feature_service/
COPY docker/healthcheck.py healthcheck.py
RUN python -m compileall -q /app

# The Prometheus endpoint, on every interface so that a scraper in another container reaches it;
# the health check below reads it too.
ENV RECSYS_FEATURES_METRICS_PORT=9100 \
    RECSYS_FEATURES_METRICS_HOST=0.0.0.0

# Numeric, so that "runAsNonRoot"-style checks can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 9100

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "feature_service"]

# SIGTERM: the consumer finishes the batch in hand, commits its offsets and leaves the group.
CMD ["python", "-m", "feature_service"]
