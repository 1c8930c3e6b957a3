"""The seed-compatible HTTP API (/api/chat, /health) of the launched app, driven with httpx."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from gradio_client import Client
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

import http_routes
from chat import ChatService
from config import ROLES, load_settings
from providers import Providers
from tests.app_server import ROOT, AppServer
from tests.conftest import app_env
from tests.fake_upstream import error, mid_error, reply, slow
from tests.servers import RedisServer

MAX_CHARS = 3000
KEY = "sk-test-PLANTED-http-key"


@pytest.fixture(scope="module")
def app(redis_server, upstream):
    env = app_env(
        upstream,
        redis_server.url.replace("/0", "/4"),
        OPENAI_API_KEY=KEY,
        PROVIDER_TIMEOUT_SECONDS="5",
        MAX_MESSAGE_CHARS=str(MAX_CHARS),
        MAX_IMAGES_PER_MESSAGE="2",
        MAX_IMAGE_MB="1",
        RATE_LIMIT_PER_MINUTE="10000",  # this module sends many requests from one address
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_upstream(upstream):
    upstream.reset()


class Stream:
    """One /api/chat answer: status, headers and the parsed `data:` events."""

    def __init__(self, response: httpx.Response, lines: list[str]) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.lines = lines
        self.done = bool(lines) and lines[-1] == "data: [DONE]"
        self.events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]

    @property
    def content(self) -> str:
        return "".join(e.get("content", "") for e in self.events)

    @property
    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]


def post_chat(app: AppServer, body: dict, **kwargs) -> Stream:
    with httpx.stream("POST", app.url + "api/chat", json=body, timeout=30, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            return Stream(response, [])
        lines = [line for line in response.iter_lines() if line]
        return Stream(response, lines)


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def png_data_url(size=(64, 48), colour=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def turn_log_line(app: AppServer, request_id: str, timeout: float = 10) -> dict:
    """The structured log line of one turn (written when the turn ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in app.log().splitlines():
            if '"chat_turn"' in line and request_id in line:
                return json.loads(line[line.index("{") :])
        time.sleep(0.05)
    raise AssertionError(f"no chat_turn line for {request_id}:\n{app.log()[-3000:]}")


# -- streaming ---------------------------------------------------------------------------------
def test_chat_streams_seed_format(app, upstream):
    text = "Hello from the upstream model, in several small chunks."
    upstream.script(reply(text, chunk_size=3))
    answer = post_chat(app, user("hi"))
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-accel-buffering"] == "no"
    assert answer.done and answer.lines.count("data: [DONE]") == 1
    assert all(set(e) == {"content"} for e in answer.events)
    assert answer.content == text
    sent = upstream.requests[-1]
    assert sent["model"] == "gpt-4o" and sent["stream"] is True
    assert sent["messages"][0] == {"role": "system", "content": ROLES["assistant"].prompt}
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}


def test_messages_are_the_context_and_options_reach_the_provider(app, upstream):
    body = {
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
        "model": "gpt-4o-mini",
        "role": "teacher",  # the body's system message wins over the role
        "temperature": 0.3,
        "max_tokens": 55,
    }
    answer = post_chat(app, body)
    assert answer.status == 200 and answer.content == "Echo: second question"
    sent = upstream.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 55
    assert sent["messages"] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


def test_reasoning_streams_before_the_answer(app, upstream):
    upstream.script(reply("42.", reasoning="Let me think about it.", chunk_size=5))
    answer = post_chat(app, user("meaning of life?"))
    kinds = [next(iter(e)) for e in answer.events]
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert "".join(e.get("reasoning", "") for e in answer.events) == "Let me think about it."
    assert answer.content == "42." and answer.done


def test_an_image_part_goes_through_the_images_pipeline(app, upstream):
    url = png_data_url()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what colour?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "model": "gpt-4o",
    }
    answer = post_chat(app, body)
    assert answer.status == 200 and answer.content == "Echo: what colour?"
    parts = upstream.requests[-1]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "what colour?"}
    sent_url = parts[1]["image_url"]["url"]
    assert parts[1]["type"] == "image_url" and sent_url.startswith("data:image/")
    raw = base64.b64decode(sent_url.split(",", 1)[1])
    assert Image.open(io.BytesIO(raw)).size == (64, 48)
    assert turn_log_line(app, answer.headers["x-request-id"])["images"] == 1


def test_images_are_refused_for_a_text_only_model_before_anything_is_sent(app, upstream):
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": png_data_url()}]}
        ],
        "model": "gpt-3.5-turbo",
    }
    refused = answer_json(app, body)
    assert refused["status"] == 400 and "cannot see images" in refused["error"]["message"]
    assert upstream.requests == []


def answer_json(app: AppServer, body: dict | str, **kwargs) -> dict:
    kwargs["content" if isinstance(body, str) else "json"] = body
    if isinstance(body, str):  # a JSON API: the body says it is JSON even when it is not
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
    response = httpx.post(app.url + "api/chat", timeout=30, **kwargs)
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert set(response.json()["error"]) == {"message", "code"}
    return {"status": response.status_code, **response.json()}


# -- errors ------------------------------------------------------------------------------------
def test_upstream_errors_arrive_as_error_events(app, upstream):
    upstream.script(
        error(401, {"error": {"message": "Invalid key", "type": "invalid_api_key"}}),
    )
    answer = post_chat(app, user("hello"))
    assert answer.status == 200 and answer.done
    assert answer.content == ""
    [err] = answer.errors
    assert err["code"] == "auth" and "rejected the API key" in err["message"]
    assert KEY not in json.dumps(answer.events)

    upstream.script(mid_error("Partial answer "))
    answer = post_chat(app, user("hello again"))
    assert answer.content == "Partial answer " and answer.done
    [err] = answer.errors
    assert err["code"] and err["message"]
    assert list(answer.events[-1]) == ["error"]  # the error comes last, before [DONE]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("not json", 400, "must be JSON"),
        ({}, 422, "messages"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, 422, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]},
            422,
            "messages.0.content",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]},
                    {"role": "user", "content": "x"},
                ]
            },
            422,
            "only be in user messages",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
            400,
            "last message",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "https://example.com/a.png"}
                        ],
                    }
                ]
            },
            400,
            "only data: URLs",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "data:image/png;base64,@@@"}
                        ],
                    }
                ]
            },
            400,
            "damaged",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": "data:image/png;base64,aGVsbG8="}
                        ],
                    }
                ]
            },
            400,
            "image1.png",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "provider": "kimi"}, 400, "MOONSHOT"),
        ({"messages": [{"role": "user", "content": "x"}], "provider": "nope"}, 400, "Unknown"),
        ({"messages": [{"role": "user", "content": "x"}], "role": "wizard"}, 400, "Unknown role"),
        ({"messages": [{"role": "user", "content": "   "}]}, 400, "Type a message"),
    ],
)
def test_bad_requests_get_a_clear_json_error(app, upstream, body, status, words):
    answer = answer_json(app, body)
    assert answer["status"] == status
    assert words in answer["error"]["message"]
    assert "Traceback" not in app.log()
    assert upstream.requests == []


def test_input_limits_apply(app, upstream):
    too_long = answer_json(app, user("x" * (MAX_CHARS + 1)))
    assert too_long["status"] == 400 and f"{MAX_CHARS:,}" in too_long["error"]["message"]
    image = {"type": "image_url", "image_url": {"url": png_data_url()}}
    three = {"messages": [{"role": "user", "content": [image, image, image]}]}
    too_many = answer_json(app, three)
    assert too_many["status"] == 400 and "at most 2" in too_many["error"]["message"]
    big = Image.frombytes("RGB", (800, 800), bytes(range(256)) * 7500)
    buf = io.BytesIO()
    big.save(buf, "BMP")  # ~1.9 MB, over MAX_IMAGE_MB=1
    url = "data:image/bmp;base64," + base64.b64encode(buf.getvalue()).decode()
    one_big = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
    too_big = answer_json(app, one_big)
    assert too_big["status"] == 400 and "image1.bmp" in too_big["error"]["message"]
    # A body larger than a message's worth of images is refused before it is parsed.
    huge = json.dumps(user("y" * (12 * 1024 * 1024)))
    oversize = answer_json(app, huge, headers={"Content-Type": "application/json"})
    assert oversize["status"] == 413 and oversize["error"]["code"] == "payload_too_large"
    assert upstream.requests == []


# -- a client that goes away -------------------------------------------------------------------
def read_until_content(response: httpx.Response) -> str:
    for line in response.iter_lines():
        if line.startswith("data: {") and "content" in json.loads(line[6:]):
            return line
    raise AssertionError("the stream ended before any content")


def test_disconnect_mid_stream_closes_the_upstream(app, upstream):
    upstream.script(slow("word " * 400, delay=0.02))
    with httpx.stream("POST", app.url + "api/chat", json=user("long please"), timeout=30) as r:
        assert r.status_code == 200
        read_until_content(r)
        request_id = r.headers["x-request-id"]
    # Leaving the block closed the connection mid-answer.
    assert upstream.wait_for_disconnect(timeout=10), "the upstream stream was not closed"
    assert len(upstream.disconnects) == 1
    record = turn_log_line(app, request_id)
    assert record["outcome"] == "stopped" and record["ttft_ms"] is not None


def test_disconnect_in_a_conversation_keeps_the_partial_answer(app, upstream):
    upstream.script(slow("word " * 400, delay=0.02))
    body = {**user("long please"), "conversation_id": "new"}
    with httpx.stream("POST", app.url + "api/chat", json=body, timeout=30) as r:
        read_until_content(r)
        cid, request_id = r.headers["x-conversation-id"], r.headers["x-request-id"]
    assert upstream.wait_for_disconnect(timeout=10)
    assert turn_log_line(app, request_id)["outcome"] == "stopped"
    client = Client(app.url, verbose=False)
    deadline = time.monotonic() + 10
    history: list = []
    while time.monotonic() < deadline and len(history) < 2:
        history = client.predict(conversation_id=cid, api_name="/history")
        time.sleep(0.1)
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["status"] == "incomplete" and history[1]["content"].startswith("word")
    assert len(history[1]["content"]) < len("word " * 400)


# -- conversations -----------------------------------------------------------------------------
def test_conversation_id_stores_turns_like_the_ui(app, upstream):
    first = post_chat(app, {**user("my name is Ada"), "conversation_id": "new"})
    cid = first.headers["x-conversation-id"]
    assert first.status == 200 and len(cid) == 32 and first.content == "Echo: my name is Ada"
    body = {
        "messages": [
            {"role": "user", "content": "ignored: the stored history is the context"},
            {"role": "user", "content": "what is my name?"},
        ],
        "conversation_id": cid,
        "role": "programmer",
    }
    second = post_chat(app, body)
    assert second.headers["x-conversation-id"] == cid
    sent = upstream.requests[-1]["messages"]
    assert sent[0]["content"] == ROLES["programmer"].prompt
    assert [m["content"] for m in sent[1:]] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
    ]
    history = Client(app.url, verbose=False).predict(conversation_id=cid, api_name="/history")
    assert [m["content"] for m in history] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "what is my name?",
        "Echo: what is my name?",
    ]
    unknown = answer_json(app, {**user("hi"), "conversation_id": "0" * 32})
    assert unknown["status"] == 400 and "no longer exists" in unknown["error"]["message"]


def test_an_image_in_a_conversation_is_stored_once(app, upstream):
    image = {"type": "image_url", "image_url": {"url": png_data_url(colour=(20, 200, 20))}}
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, image]}],
        "conversation_id": "new",
    }
    answer = post_chat(app, body)
    assert answer.status == 200 and answer.content == "Echo: look"
    cid = answer.headers["x-conversation-id"]
    history = Client(app.url, verbose=False).predict(conversation_id=cid, api_name="/history")
    [ref] = history[0]["images"]
    assert (ref["width"], ref["height"]) == (64, 48) and ref["name"] == "image1.png"


# -- the request log ---------------------------------------------------------------------------
def test_each_turn_writes_one_structured_log_line(app, upstream):
    secret_text = "PRIVATE-MESSAGE-TEXT-42"
    answer = post_chat(app, {**user(secret_text), "model": "gpt-4o-mini"})
    record = turn_log_line(app, answer.headers["x-request-id"])
    assert record["event"] == "chat_turn"
    assert record["provider"] == "openai" and record["model"] == "gpt-4o-mini"
    assert record["outcome"] == "complete" and record["images"] == 0
    assert record["tokens"] and record["ttft_ms"] is not None and record["duration_ms"] >= 0
    log = app.log()
    assert sum(answer.headers["x-request-id"] in line for line in log.splitlines()) == 1
    assert secret_text not in log and KEY not in log


# -- Gradio is still there ---------------------------------------------------------------------
def test_gradio_routes_still_work_beside_the_http_api(app):
    assert httpx.get(app.url, timeout=10).status_code == 200
    client = Client(app.url, verbose=False)
    assert [r["id"] for r in client.predict(api_name="/roles")] == list(ROLES)
    assert httpx.get(app.url + "api/chat", timeout=10).status_code == 405


# -- /health -----------------------------------------------------------------------------------
def test_health_reports_without_secrets(app):
    response = httpx.get(app.url + "health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"] == "1.0.0"
    assert "openai" in body["providers"] and "kimi" not in body["providers"]
    assert body["history"] == {"backend": "redis", "ok": True}
    assert "PLANTED" not in response.text and "sk-" not in response.text


def test_health_is_503_while_redis_is_down():
    redis = RedisServer().start()
    try:
        with AppServer({"REDIS_URL": redis.url}) as server:
            assert httpx.get(server.url + "health", timeout=10).status_code == 200
            redis.stop()
            down = httpx.get(server.url + "health", timeout=10)
            assert down.status_code == 503
            body = down.json()
            assert body["status"] == "unavailable"
            assert body["history"] == {"backend": "redis", "ok": False}
            assert "REDIS_URL" in body["message"]
            # A conversation cannot be stored now: a clear 503, not a 500.
            stored = answer_json(server, {**user("hi"), "conversation_id": "new"})
            assert stored["status"] == 503 and stored["error"]["code"] == "history_unavailable"
            # A stateless chat needs no Redis and keeps working.
            assert "hi" in post_chat(server, user("hi")).content
            redis.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if httpx.get(server.url + "health", timeout=10).status_code == 200:
                    break
                time.sleep(0.2)
            assert httpx.get(server.url + "health", timeout=10).json()["history"]["ok"]
            assert "Traceback" not in server.log()
    finally:
        redis.close()


# -- auth --------------------------------------------------------------------------------------
class LoginAppServer(AppServer):
    """Behind a login Gradio's /gradio_api/info (AppServer's probe) is 401: probe /health."""

    def start(self, timeout: float = 60) -> LoginAppServer:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"app not ready:\n{self.log()}")


def test_auth_protects_the_chat_but_not_health():
    with LoginAppServer(args=["--auth", "alice:wonder land"]) as server:
        url = server.url + "api/chat"
        refused = httpx.post(url, json=user("hi"), timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert "curl -u" in refused.json()["error"]["message"]
        wrong = httpx.post(url, json=user("hi"), auth=("alice", "nope"), timeout=10)
        assert wrong.status_code == 401
        answer = post_chat(server, user("hi"), auth=("alice", "wonder land"))
        assert answer.status == 200 and "hi" in answer.content and answer.done
        assert httpx.get(server.url + "health", timeout=10).status_code == 200
        # Gradio's own API still wants its login; its login cookie also opens /api/chat.
        assert httpx.get(server.url + "gradio_api/info", timeout=10).status_code == 401
        with httpx.Client(base_url=server.url, timeout=10) as browser:
            login = browser.post("login", data={"username": "alice", "password": "wonder land"})
            assert login.status_code == 200
            page = {"Origin": server.url.rstrip("/")}  # the app's own page (no CSRF)
            with browser.stream("POST", "api/chat", json=user("cookie"), headers=page) as response:
                assert response.status_code == 200
                assert "data: [DONE]" in list(response.iter_lines())


# -- the rate limit (rate_limits.py, counted by ChatService per IP, as for the UI) ------------
def test_rate_limit_answers_429_with_retry_after(tmp_path):
    settings = load_settings({"RATE_LIMIT_PER_MINUTE": "1"})
    service = ChatService(settings, Providers({"DEMO_DELAY_MS": "0"}), image_dir=tmp_path)
    app = Starlette(routes=http_routes.routes(service))
    with TestClient(app) as client:
        invalid = client.post("/api/chat", json={"messages": []})
        assert invalid.status_code == 422  # refused before it is counted
        first = client.post("/api/chat", json=user("hi"))
        assert first.status_code == 200 and first.text.endswith("data: [DONE]\n\n")
        second = client.post("/api/chat", json={**user("again"), "conversation_id": "new"})
        assert second.status_code == 429
        wait = int(second.headers["retry-after"])
        assert 1 <= wait <= 60 and f"wait {wait} s" in second.json()["error"]["message"]
        assert second.json()["error"]["code"] == "rate_limited"
        assert client.get("/health").status_code == 200  # probes are never limited


# -- deployment files --------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_slim_non_root_and_checks_health():
    steps = dockerfile_instructions()
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "CMD"}
    assert {op for op, _ in steps} <= known
    assert steps[0][0] == "FROM" and "slim" in steps[0][1]
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    [health] = [arg for op, arg in steps if op == "HEALTHCHECK"]
    assert "/health" in health and "CMD" in health
    cmd = json.loads(next(arg for op, arg in steps if op == "CMD"))
    assert cmd == ["python", "app.py"]
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "GRADIO_SERVER_NAME=0.0.0.0" in env and "GRADIO_SERVER_PORT=7860" in env
    copied = [arg.split()[0] for op, arg in steps if op == "COPY"]
    assert all((ROOT / src).exists() for src in copied)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and "tests" in ignored and ".git" in ignored


def test_compose_runs_the_app_with_redis():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    app_service, redis = compose["services"]["app"], compose["services"]["redis"]
    assert app_service["build"] == "."
    assert app_service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert app_service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":7860") for p in app_service["ports"])
    assert redis["image"].startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "redis-data" in compose["volumes"]
