"""The ASGI guards of http_guards.py on a small Starlette app: the request-size limit, the
security headers and the 404 for unknown API endpoints (the launched app meets them in
tests/test_rate_limits.py and tests/test_http_security.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from http_guards import (
    BodySizeLimit,
    SecurityHeaders,
    UnknownEndpoint,
    as_text,
    max_gradio_body_bytes,
)
from tests.app_server import ROOT

pytestmark = pytest.mark.anyio


# -- request-size guard ------------------------------------------------------------------
async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def guarded_app() -> Starlette:
    routes = [
        Route("/gradio_api/queue/join", echo_length, methods=["POST"]),
        Route("/gradio_api/upload", echo_length, methods=["POST"]),
        Route("/api/other", echo_length, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BodySizeLimit, max_bytes=1000)])


async def test_body_size_limit_refuses_big_bodies_before_reading_them():
    transport = httpx.ASGITransport(app=guarded_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        ok = await http.post("/gradio_api/queue/join", content=b"x" * 1000)
        assert ok.json() == {"bytes": 1000}
        big = await http.post("/gradio_api/queue/join", content=b"x" * 1001)
        assert big.status_code == 413 and "too large" in big.json()["error"]

        async def chunks():  # no Content-Length: counted while it streams
            for _ in range(5):
                yield b"y" * 400

        streamed = await http.post("/gradio_api/queue/join", content=chunks())
        assert streamed.status_code == 413
        # Uploads have Gradio's max_file_size; other apps' routes are not ours to judge.
        assert (await http.post("/gradio_api/upload", content=b"z" * 5000)).status_code == 200
        assert (await http.post("/api/other", content=b"z" * 5000)).status_code == 200


def test_max_body_allows_the_longest_message():
    limit = 20_000
    payload = {"data": ["语" * limit, [], "custom", "", "", "", "提" * limit, "auto"]}
    assert len(json.dumps(payload).encode()) < max_gradio_body_bytes(limit)


def test_text_arguments():
    assert as_text("  hi ") == "hi"
    assert as_text(None) == "" and as_text(123) == "" and as_text(["x"]) == ""


# -- what the browser may render and fetch ------------------------------------------------------
async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def missing_fn(request: Request) -> JSONResponse:
    raise KeyError(9999)  # what Gradio's get_fn raises for an unknown fn_index


async def real_bug(request: Request) -> JSONResponse:
    raise RuntimeError("a genuine bug must still surface")


async def test_security_headers_and_unknown_endpoints():
    routes = [
        Route("/", ok),
        Route("/gradio_api/queue/join", missing_fn, methods=["POST"]),
        Route("/gradio_api/call/broken", real_bug, methods=["POST"]),
    ]
    # As in app.py: user middleware, inside Starlette's own error handler.
    middleware = [Middleware(SecurityHeaders), Middleware(UnknownEndpoint)]
    app = Starlette(routes=routes, middleware=middleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        page = await http.get("/")
        assert "form-action 'self'" in page.headers["content-security-policy"]
        assert "img-src 'self' data: blob:" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        missing = await http.post("/gradio_api/queue/join")
        assert missing.status_code == 404 and "No such API endpoint" in missing.json()["error"]
        assert (await http.post("/gradio_api/call/broken")).status_code == 500


# -- the modules --------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("first", ["http_guards", "client_address", "rate_limits"])
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    """http_guards and client_address import each other (client_ip / send_json): either may
    be imported first. And `limits` is the PyPI package, not a module of this project."""
    code = f"import {first}, limits.aio.strategies; assert 'site-packages' in limits.__file__"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
