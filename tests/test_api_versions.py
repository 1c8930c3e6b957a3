"""The public API of versions: /retry streams a new version of the last answer like /chat,
and /history shows every version of a message with who wrote it (a launched app, Redis)."""

from __future__ import annotations

import pytest
from gradio_client import Client

from tests.app_server import AppServer
from tests.conftest import app_env
from tests.fake_upstream import reply


@pytest.fixture(scope="module")
def app(redis_server, upstream):
    url = redis_server.url.replace("/0", "/9")
    with AppServer(app_env(upstream, url, RATE_LIMIT_PER_MINUTE="100")) as server:
        yield server


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def test_retry_streams_a_new_version_and_history_shows_them_all(client, upstream):
    upstream.script(reply("first answer"), reply("second answer"))
    _, cid = client.predict(message="a question", api_name="/chat")
    job = client.submit(conversation_id=cid, model="gpt-4o-mini", api_name="/retry")
    assert job.result() == ("second answer", cid)
    assert len(job.outputs()) >= 1, "streamed"
    history = client.predict(conversation_id=cid, api_name="/history")
    assert [m["role"] for m in history] == ["user", "assistant"]
    answer = history[1]
    assert answer["content"] == "second answer"
    assert (answer["provider"], answer["model"]) == ("openai", "gpt-4o-mini")
    assert answer["version"] == 1
    versions = answer["versions"]
    assert [v["content"] for v in versions] == ["first answer", "second answer"]
    assert all({"content", "provider", "model"} <= set(v) for v in versions)
    assert "versions" not in history[0], "a message with one version has no list"
    # The next turn continues from the version shown.
    client.predict(message="and then?", conversation_id=cid, api_name="/chat")
    sent = [m["content"] for m in upstream.requests[-1]["messages"][1:]]
    assert sent == ["a question", "second answer", "and then?"]


def test_retry_is_refused_clearly(client):
    for bad, message in (
        ("nope", "not valid"),
        ("0" * 32, "no longer exists"),
    ):
        with pytest.raises(Exception, match=message):
            client.predict(conversation_id=bad, api_name="/retry")


def test_versions_and_shares_survive_a_restart(redis_server, upstream):
    """A second app process on the same Redis (a restart, or a replica) sees the versions and
    the shared link as they were left."""
    url = redis_server.url.replace("/0", "/11")
    env = app_env(upstream, url, RATE_LIMIT_PER_MINUTE="100")
    upstream.script(reply("one"), reply("two"))
    with AppServer(env) as first:
        client = Client(first.url, verbose=False)
        _, cid = client.predict(message="q", api_name="/chat")
        client.predict(conversation_id=cid, api_name="/retry")
        link = client.predict(conversation_id=cid, api_name="/share_conversation")
    with AppServer(env) as second:
        client = Client(second.url, verbose=False)
        answer = client.predict(conversation_id=cid, api_name="/history")[-1]
        assert [v["content"] for v in answer["versions"]] == ["one", "two"]
        assert answer["version"] == 1
        assert client.predict(conversation_id=cid, api_name="/share_conversation") == link
