"""Conversations across replicas, restarts and export/import, with real app processes."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.app_server import AppServer
from tests.conftest import app_env
from tests.servers import RedisServer


def chat(client: Client, **kwargs) -> tuple[str, str]:
    return client.predict(api_name="/chat", **kwargs)


def test_two_replicas_share_conversations(redis_url, upstream):
    env = app_env(upstream, redis_url)
    with AppServer(env) as first, AppServer(env) as second:
        one, two = Client(first.url, verbose=False), Client(second.url, verbose=False)
        reply, cid = chat(one, message="hello from replica one")
        assert reply == "Echo: hello from replica one"
        history = two.predict(conversation_id=cid, api_name="/history")
        assert [m["content"] for m in history] == [
            "hello from replica one",
            "Echo: hello from replica one",
        ]
        reply, same = chat(two, message="continued on two", conversation_id=cid)
        assert same == cid
        # the second replica sent the whole conversation as context
        assert [m["role"] for m in upstream.requests[-1]["messages"]] == [
            "system",
            "user",
            "assistant",
            "user",
        ]
        assert len(one.predict(conversation_id=cid, api_name="/history")) == 4


def test_app_restart_with_persisting_redis_loses_nothing(upstream, tmp_path):
    redis = RedisServer(aof=True).start()
    try:
        env = app_env(upstream, redis.url)
        image = tmp_path / "dot.png"
        Image.new("RGB", (32, 32), (250, 10, 10)).save(image)
        with AppServer(env) as app:
            client = Client(app.url, verbose=False)
            _, cid = chat(client, message="remember me", images=[handle_file(image)])
            before = client.predict(conversation_id=cid, api_name="/history")
        redis.restart()  # the Redis server itself restarts too: AOF brings it all back
        with AppServer(env) as app:
            client = Client(app.url, verbose=False)
            after = client.predict(conversation_id=cid, api_name="/history")
            assert after == before and after[0]["images"][0]["sha256"]
            exported = json.loads(
                client.predict(conversation_id=cid, format="json", api_name="/export_conversation")
            )
            assert exported["messages"][0]["images"], "the image survived both restarts"
    finally:
        redis.close()


def test_export_and_import_round_trip(redis_url, upstream, tmp_path):
    image = tmp_path / "blue.png"
    Image.new("RGB", (40, 30), (0, 0, 255)).save(image)
    with AppServer(app_env(upstream, redis_url)) as app:
        client = Client(app.url, verbose=False)
        _, cid = chat(client, message="a picture", images=[handle_file(image)])
        chat(client, message="second message", conversation_id=cid)
        data = client.predict(conversation_id=cid, format="json", api_name="/export_conversation")
        markdown = client.predict(
            conversation_id=cid, format="markdown", api_name="/export_conversation"
        )
        assert "a picture" in markdown and "Echo: second message" in markdown
        ref = json.loads(data)["messages"][0]["images"][0]
        assert ref["mime"] == "image/png" and len(ref["data"]) > 50, "images are in the JSON"
        assert "data:image/png;base64," in markdown, "the Markdown export is self-contained"
        new_cid = client.predict(data=data, api_name="/import_conversation")
        assert new_cid != cid and len(new_cid) == 32
        original = client.predict(conversation_id=cid, api_name="/history")
        imported = client.predict(conversation_id=new_cid, api_name="/history")
        assert [(m["role"], m["content"]) for m in imported] == [
            (m["role"], m["content"]) for m in original
        ]
        assert imported[0]["images"][0]["sha256"] == original[0]["images"][0]["sha256"]
        with pytest.raises(Exception, match="Import failed"):
            client.predict(data="{not json", api_name="/import_conversation")
        with pytest.raises(Exception, match="Import failed"):
            client.predict(data=json.dumps({"messages": "nope"}), api_name="/import_conversation")
