"""Launch `python app.py` as a user would, on a free port, with a chosen environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent

# Every provider variable the app reads: cleared so the developer's own keys never leak in.
PROVIDER_VARS = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DEEPSEEK_API_KEY",
    "ARK_API_KEY",
    "MOONSHOT_API_KEY",
    "DASHSCOPE_API_KEY",
    "ZHIPUAI_API_KEY",
    "SILICONFLOW_API_KEY",
    "OPENROUTER_API_KEY",
    "OLLAMA_BASE_URL",
    "CUSTOM_BASE_URL",
    "CUSTOM_API_KEY",
    "CUSTOM_MODELS",
    "DEFAULT_PROVIDER",
    "REDIS_URL",
    "APP_SECRET",
    "APP_AUTH",
]


class AppServer:
    def __init__(self, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = args or []
        self.log_path = Path(tempfile.mkstemp(prefix="app-", suffix=".log")[1])
        base = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
        self.env = {
            **base,
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="app-gradio-"),
            "DEMO_DELAY_MS": "5",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        # The app must not pick up a developer's .env: run it from a clean working directory.
        self.cwd = tempfile.mkdtemp(prefix="app-cwd-")

    def start(self, timeout: float = 60) -> AppServer:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # 401: up, behind --auth / APP_AUTH (a login is needed first)
                if httpx.get(self.url + "gradio_api/info", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"app not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGTERM ends it at once (SIGINT's graceful shutdown costs ~1-6 s per app, and
            # nothing the tests check depends on it: Redis has every acknowledged write).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
