"""The fake upstream itself, spoken to with plain httpx (the rest of the suite relies on it)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, error, reply, unaccepted_port


@pytest.fixture
def upstream():
    with FakeUpstream(models=["m1", "m2"]) as server:
        yield server


def sse_payloads(text: str) -> list:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_models_and_unknown_routes(upstream):
    listing = httpx.get(f"{upstream.base_url}/models").json()
    assert [m["id"] for m in listing["data"]] == ["m1", "m2"]
    assert httpx.post(f"{upstream.url}/v2/chat/completions", json={}).status_code == 404
    assert upstream.requests == []  # only chat requests are recorded


def test_default_echo_stream_with_usage(upstream):
    body = {
        "model": "m1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "ping"}]}],
    }
    response = httpx.post(f"{upstream.base_url}/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-3])
    assert text == "Echo: ping"
    assert payloads[-3]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-2]["choices"] == [] and payloads[-2]["usage"]["total_tokens"] > 0
    assert upstream.requests == [body] and upstream.streams[0].finished


def test_non_streaming_reply_and_error_headers(upstream):
    upstream.script(reply("whole answer"), error(429, {"error": {}}, {"Retry-After": "7"}))
    url = f"{upstream.base_url}/chat/completions"
    first = httpx.post(url, json={"model": "m1", "messages": []}).json()
    assert first["choices"][0]["message"]["content"] == "whole answer"
    second = httpx.post(url, json={"model": "m1", "messages": []})
    assert second.status_code == 429 and second.headers["retry-after"] == "7"
    assert upstream.pending == 0


@pytest.mark.e2e  # starts a server in the test's body
def test_api_key_is_enforced_when_set():
    with FakeUpstream(api_key="right") as upstream:
        url = f"{upstream.base_url}/chat/completions"
        wrong = httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        right = httpx.post(url, json={"messages": []}, headers={"Authorization": "Bearer right"})
        assert right.status_code == 200
        assert upstream.headers[1]["authorization"] == "Bearer right"


def test_unaccepted_port_makes_connect_hang():
    with unaccepted_port() as port, socket.socket() as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.connect(("127.0.0.1", port))
