# Multimodal chat: the Gradio app plus the plain HTTP API (/api/chat, /health) on port 7860.
# Build: docker build -t multimodal-chat .   Run: see compose.yaml (adds Redis) or README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_TEMP_DIR=/tmp/gradio

WORKDIR /app

# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The code stays root-owned (read-only for the app); the app only writes to GRADIO_TEMP_DIR.
COPY . .
RUN useradd --create-home --uid 1000 app
USER app

EXPOSE 7860
# 503 (Redis configured but down) or no answer marks the container unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GRADIO_SERVER_PORT', '7860') + '/health', timeout=4)"]

CMD ["python", "app.py"]
