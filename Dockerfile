# syntax=docker/dockerfile:1
# A slim, non-root image that runs `python app.py` on $PORT; the same image serves Fly.io
# (fly.toml) and Cloud Run (deploy/cloudrun.yaml).
#
# Reproducible: the base is named by its full tag (Python 3.11.15 on Debian 12 "bookworm"), and
# every runtime package, transitive ones included, comes from requirements.lock with its sha256
# hashes. Both stages use the same base, because the venv's python is a link to the base's
# /usr/local/bin/python3.11. tests/test_deploy.py checks all of this and runs hadolint.

FROM python:3.11.15-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: pip refuses any file whose hash is not in the lock, and any package the lock
# does not pin (so a lock missing a dependency fails here, not at run time). --only-binary: every
# locked package has a wheel for this platform, so nothing is built from source and no unhashed
# build backend is fetched into an isolated build environment.
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
    && /opt/venv/bin/pip check

FROM python:3.11.15-slim-bookworm
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080
WORKDIR /app
COPY app.py ./
COPY api/ api/
COPY pipeline/ pipeline/
COPY static/ static/
# Compiled once here, as root: the service cannot write __pycache__ at run time.
RUN python -m compileall -q /app
# Files stay root-owned: the service only reads them. The user is numeric, so a runtime that
# refuses root (Kubernetes' runAsNonRoot) can verify it without an /etc/passwd entry.
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself, so the app can drain.
CMD ["python", "app.py"]
