"""The app as users and API clients meet it: `python app.py` launched, driven by gradio_client."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from config import ROLES
from tests.app_server import ROOT, AppServer
from tests.conftest import app_env
from tests.fake_upstream import error, slow
from tests.servers import free_port

pytestmark = pytest.mark.e2e  # every test here launches the app


@pytest.fixture(scope="module")
def app(redis_server, upstream):
    env = app_env(
        upstream,
        redis_server.url.replace("/0", "/3"),
        OPENAI_API_KEY="sk-test-PLANTED-app-key",
        DEEPSEEK_API_KEY="sk-test-deepseek",
        DEEPSEEK_BASE_URL=upstream.base_url,
        PROVIDER_TIMEOUT_SECONDS="5",
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def chat(client: Client, **kwargs) -> list[tuple[str, str]]:
    job = client.submit(api_name="/chat", **kwargs)
    job.result(timeout=30)
    return job.outputs()


def test_zero_config_start_uses_demo_and_embedded_store(tmp_path):
    with AppServer() as server:
        client = Client(server.url, verbose=False)
        providers = {p["id"]: p for p in client.predict(api_name="/providers")}
        assert set(providers) == {
            "openai",
            "deepseek",
            "doubao",
            "kimi",
            "qwen",
            "zhipu",
            "siliconflow",
            "openrouter",
            "ollama",
            "custom",
            "demo",
        }
        assert providers["demo"]["enabled"]
        assert not any(p["enabled"] for pid, p in providers.items() if pid != "demo")
        outputs = chat(client, message="hello from a new user")
        reply, cid = outputs[-1]
        assert "hello from a new user" in reply and "demo" in reply.lower()
        assert len(cid) == 32
        assert len(client.predict(conversation_id=cid, api_name="/history")) == 2
        page = httpx.get(server.url, timeout=10)
        assert page.status_code == 200 and page.text.lstrip().lower().startswith("<!doctype html")
        components = httpx.get(server.url + "config", timeout=10).json()["components"]
        shown = {c["props"]["elem_id"]: c for c in components if c["props"].get("elem_id")}
        assert shown["chat-input"]["type"] == "multimodaltextbox"
        assert shown["chatbot"]["type"] == "chatbot"
        assert shown["provider"]["props"]["value"] == "demo"
        assert shown["provider"]["props"]["choices"] == [["Demo (offline)", "demo"]]
        assert "in memory" in server.log()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_default_port_is_7860():
    """`python app.py` with no --port and no GRADIO_SERVER_PORT serves on 127.0.0.1:7860.
    Where 7860 is taken (a developer's own app), the help must still say so."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "--share" in out.stdout and "--auth" in out.stdout
    assert "default 7860" in " ".join(out.stdout.split())
    if not port_is_free(7860):
        return
    server = AppServer({"GRADIO_NUM_PORTS": "1"})  # 7860 only: never a silent fallback
    del server.env["GRADIO_SERVER_PORT"]
    server.port, server.url = 7860, "http://127.0.0.1:7860/"
    with server:
        assert httpx.get(server.url + "health", timeout=10).status_code == 200
        assert "Running on local URL:  http://127.0.0.1:7860" in server.log()


def test_unreachable_redis_fails_at_start_with_a_clear_message():
    server = AppServer({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(RuntimeError) as failure:
        server.start(timeout=60)
    message = str(failure.value)
    assert "Redis" in message and "REDIS_URL" in message
    assert "Traceback" not in message


def test_roles_and_providers_endpoints(client):
    roles = client.predict(api_name="/roles")
    assert [r["id"] for r in roles] == ["assistant", "teacher", "programmer"]
    assert all(r["prompt"] and r["name"] for r in roles)
    providers = {p["id"]: p for p in client.predict(api_name="/providers")}
    assert providers["openai"]["enabled"] and providers["deepseek"]["enabled"]
    assert "gpt-4o" in providers["openai"]["vision_models"]
    assert providers["deepseek"]["vision_models"] == []
    assert not providers["kimi"]["enabled"]
    assert "sk-test" not in str(providers)


def test_chat_streams_and_continues_a_conversation(client, upstream):
    upstream.script(slow("The quick brown fox jumps over the lazy dog. " * 3, delay=0.02))
    outputs = chat(client, message="tell me", role="programmer", provider="openai", model="gpt-4o")
    replies = [reply for reply, _ in outputs]
    assert len(replies) >= 3, "several streamed updates"
    assert replies[-1] == "The quick brown fox jumps over the lazy dog. " * 3
    cid = outputs[-1][1]
    body = upstream.requests[-1]
    assert body["messages"][0] == {"role": "system", "content": ROLES["programmer"].prompt}
    assert body["model"] == "gpt-4o" and body["stream"] is True

    outputs = chat(
        client, message="and again", provider="openai", model="gpt-4o", conversation_id=cid
    )
    assert outputs[-1] == ("Echo: and again", cid)
    sent = upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    history = client.predict(conversation_id=cid, api_name="/history")
    assert [m["content"] for m in history][-2:] == ["and again", "Echo: and again"]


def test_images_reach_the_model_and_history(client, upstream, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (1600, 1200), (20, 120, 220)).save(photo, quality=90)
    logo = tmp_path / "logo.png"
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(logo)
    outputs = chat(
        client,
        message="describe",
        images=[handle_file(photo), handle_file(logo)],
        provider="openai",
        model="gpt-4o",
    )
    cid = outputs[-1][1]
    parts = upstream.requests[-1]["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2
    first = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert max(first.size) <= 2048 and first.size[0] > first.size[1]
    second = Image.open(io.BytesIO(base64.b64decode(urls[1].split(",", 1)[1]))).convert("RGB")
    assert second.getpixel((5, 5)) == (255, 255, 255), "transparency flattened onto white"
    images = client.predict(conversation_id=cid, api_name="/history")[0]["images"]
    assert [i["name"] for i in images] == ["photo.jpg", "logo.png"]


def test_errors_are_clear_and_the_app_keeps_serving(client, upstream, tmp_path):
    upstream.script(
        error(401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}})
    )
    with pytest.raises(Exception) as failure:
        chat(client, message="hi", provider="openai", model="gpt-4o")
    assert "OPENAI_API_KEY" in str(failure.value)
    assert "Traceback" not in str(failure.value)

    bad = tmp_path / "fake.png"
    bad.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    with pytest.raises(Exception, match="fake.png"):
        chat(client, message="look", images=[handle_file(bad)], provider="openai", model="gpt-4o")

    with pytest.raises(Exception, match="cannot see images"):
        chat(
            client,
            message="look",
            images=[handle_file(bad)],
            provider="deepseek",
            model="deepseek-chat",
        )
    with pytest.raises(Exception, match="not configured|KIMI|MOONSHOT"):
        chat(client, message="hi", provider="kimi")

    assert chat(client, message="still there?", provider="openai", model="gpt-4o")[-1][0] == (
        "Echo: still there?"
    )


def test_history_and_delete_endpoints(client):
    cid = chat(client, message="to be deleted", provider="openai", model="gpt-4o")[-1][1]
    assert len(client.predict(conversation_id=cid, api_name="/history")) == 2
    assert "Deleted" in client.predict(conversation_id=cid, api_name="/delete_conversation")
    assert client.predict(conversation_id=cid, api_name="/history") == []
    with pytest.raises(Exception, match="not valid"):
        client.predict(conversation_id="../../etc/passwd", api_name="/history")


def test_cancel_closes_the_upstream_and_keeps_the_partial(client, upstream):
    upstream.script(slow("word " * 400, delay=0.02))
    before = len(upstream.disconnects)
    job = client.submit(
        message="long answer please", provider="openai", model="gpt-4o", api_name="/chat"
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(len(r) > 20 for r, _ in job.outputs()):
        time.sleep(0.05)
    cid = job.outputs()[-1][1]
    job.cancel()
    deadline = time.monotonic() + 5
    while len(upstream.disconnects) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(upstream.disconnects) > before, "Stop closed the upstream stream"
    deadline = time.monotonic() + 5
    history = []
    while time.monotonic() < deadline:
        history = client.predict(conversation_id=cid, api_name="/history")
        if len(history) == 2:
            break
        time.sleep(0.1)
    assert history[-1]["role"] == "assistant" and history[-1]["status"] == "incomplete"
    assert history[-1]["content"].startswith("word word")
    assert len(history[-1]["content"]) < len("word " * 400)


def test_keys_never_reach_the_page_or_the_api(app, client):
    page = httpx.get(app.url, timeout=10).text
    config = httpx.get(app.url + "config", timeout=10).text
    info = httpx.get(app.url + "gradio_api/info", timeout=10).text
    for text in (page, config, info, str(client.predict(api_name="/providers"))):
        assert "PLANTED" not in text
