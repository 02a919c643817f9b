# syntax=docker/dockerfile:1
# Minimal image for Fly.io; the full container work (hashed requirements, Cloud Run) comes later.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim
# The venv's python links to /usr/local/bin/python3.11, which this stage has too.
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
# Files stay root-owned: the service only reads them.
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself, so the app can drain.
CMD ["python", "app.py"]
