"""Secrets never leak (issue 13, item 9): keys redacted before any cut, no internal URL in
what users see, no deep links, exports only at unguessable paths that expire.

Each test is the attack, against the launched app where it can be, then honest use."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from exports import ExportFiles, file_stem
from providers import Providers, error_info
from tests.app_server import AppServer
from tests.fake_upstream import FakeUpstream, error
from tests.servers import free_port

# An Ark (Doubao) key is a bare UUID: no "sk-" prefix for a pattern to spot.
ARK_KEY = str(uuid.uuid4())


def key_pieces(key: str, size: int = 8) -> list[str]:
    """Every run of `size` characters of the key: none may be shown."""
    return [key[i : i + size] for i in range(len(key) - size + 1)]


def assert_no_key(text: str, key: str = ARK_KEY) -> None:
    leaked = [piece for piece in key_pieces(key) if piece in text]
    assert not leaked, f"part of the key leaked: {leaked[:3]} in {text!r}"


def key_at_the_cut(key: str) -> dict:
    """An error message whose key straddles the 200-character cut of error messages."""
    return {"error": {"message": "x" * 180 + f" key {key} is not valid", "code": "invalid"}}


# -- redaction comes before truncation -------------------------------------------------------
def test_a_key_at_the_cut_is_redacted_whole():
    info = error_info(key_at_the_cut(ARK_KEY), secrets=(ARK_KEY,))
    assert_no_key(info.message)
    assert len(info.message) <= 200


def test_an_unknown_uuid_like_key_is_redacted_too():
    other = str(uuid.uuid4())  # not a configured key: a user's own, echoed by a proxy
    info = error_info({"error": {"message": f"key {other} rejected"}})
    assert_no_key(info.message, other)
    assert "rejected" in info.message


def test_provider_text_loses_internal_urls():
    info = error_info({"error": {"message": "upstream http://10.1.2.3:8000/v1 refused"}})
    assert "10.1.2.3" not in info.message and "refused" in info.message


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream):
    closed = free_port()  # nothing listens here: an operator's internal address
    env = {
        "ARK_API_KEY": ARK_KEY,
        "ARK_BASE_URL": upstream.base_url,
        "CUSTOM_BASE_URL": f"http://127.0.0.1:{closed}/internal/v1",
        "CUSTOM_MODELS": "local-model",
        "DEFAULT_PROVIDER": "doubao",
        "PROVIDER_TIMEOUT_SECONDS": "5",
        "PROVIDER_CONNECT_TIMEOUT_SECONDS": "1",
        "RATE_LIMIT_PER_MINUTE": "1000",
    }
    with AppServer(env) as server:
        yield server


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def failed_chat(client: Client, **kwargs) -> tuple[str, str]:
    """(the error the API caller got, the conversation id of the failed turn)."""
    job = client.submit(api_name="/chat", **kwargs)
    with pytest.raises(Exception) as caught:
        job.result(timeout=30)
    outputs = job.outputs()
    return str(caught.value), outputs[-1][1] if outputs else ""


def test_half_a_key_is_never_shown_nor_stored(app, client, upstream):
    # A 400 shows the provider's own words: the key sits where they are cut.
    upstream.script(error(400, key_at_the_cut(ARK_KEY)))
    message, cid = failed_chat(client, message="hello", provider="doubao")
    assert "refused the request" in message and "xxxx" in message
    assert_no_key(message)
    assert cid, "the failed turn is stored (the user's message is kept)"
    history = client.predict(cid, api_name="/history")
    assert history[0]["content"] == "hello"
    assert_no_key(repr(history))
    assert_no_key(app.log())


def test_a_rejected_key_says_what_to_do_and_shows_none_of_it(app, client, upstream):
    upstream.script(error(401, {"error": {"message": f"invalid key {ARK_KEY}"}}))
    message, _ = failed_chat(client, message="again", provider="doubao")
    assert "ARK_API_KEY" in message
    assert_no_key(message)


def test_an_internal_base_url_is_not_shown_to_users(app, client):
    message, _ = failed_chat(client, message="hi", provider="custom", model="local-model")
    assert "Cannot reach" in message and "CUSTOM_BASE_URL" in message
    assert "127.0.0.1" not in message and "/internal" not in message
    assert "/internal/v1" in app.log(), "the operator still finds the address in the log"


def test_the_public_preset_address_is_still_shown():
    registry = Providers({"OPENAI_API_KEY": "sk-x"})
    assert registry.get("openai").shown_url == "https://api.openai.com/v1"
    overridden = Providers({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://10.0.0.9/v1"})
    assert overridden.get("openai").shown_url == ""


@pytest.mark.anyio
async def test_the_settings_panel_check_hides_internal_urls():
    from check import check_providers, format_report

    url = f"http://127.0.0.1:{free_port()}/private/v1"
    registry = Providers({"CUSTOM_BASE_URL": url, "CUSTOM_MODELS": "m"})
    try:
        public = format_report(
            await check_providers(registry, provider_ids=["custom"], for_operator=False)
        )
        operator = format_report(await check_providers(registry, provider_ids=["custom"]))
    finally:
        await registry.aclose()
    assert "/private" not in public and "CUSTOM_BASE_URL" in public
    assert "/private" in operator, "the operator's own --check still names the address"


# -- deep links -------------------------------------------------------------------------------
def test_deep_links_cannot_dump_a_session(app, client):
    client.predict(api_name="/roles")  # a live session exists
    for session in ("", client.session_hash, "x" * 11):
        reply = httpx.get(
            app.url + "gradio_api/deep_link", params={"session_hash": session}, timeout=10
        )
        assert reply.status_code == 404
        assert "deep links" in reply.json()["error"]["message"]
    temp = Path(app.env["GRADIO_TEMP_DIR"])
    assert not (temp / "deep_links").exists(), "no session state was written to a file"


# -- exports ------------------------------------------------------------------------------------
def test_an_export_lives_in_an_unguessable_folder_named_after_the_title(tmp_path):
    exports = ExportFiles(tmp_path)
    cid = uuid.uuid4().hex
    files = exports.write(cid, "Trip to Xi'an / 西安", "# md", {"messages": []})
    folder = Path(files[0]).parent
    assert re.fullmatch(r"[0-9a-f]{32}", folder.name)
    assert cid[:8] not in folder.name
    assert [Path(f).name for f in files] == ["Trip to Xi an 西安.md", "Trip to Xi an 西安.json"]
    again = exports.write(cid, "Trip", "", None)
    assert Path(again[0]).parent != folder, "each export gets a new folder"


def test_exports_go_with_their_conversation(tmp_path):
    exports = ExportFiles(tmp_path)
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    gone = exports.write(mine, "a", "", None)
    kept = exports.write(other, "b", "", None)
    assert exports.forget(mine) == 1
    assert not Path(gone[0]).exists() and Path(kept[0]).exists()


def test_exports_expire(tmp_path):
    exports = ExportFiles(tmp_path, ttl_s=60)
    old = exports.write(uuid.uuid4().hex, "old", "", None)
    past = time.time() - 120
    os.utime(Path(old[0]).parent, (past, past))
    fresh = exports.write(uuid.uuid4().hex, "fresh", "", None)  # writing sweeps
    assert not Path(old[0]).exists() and Path(fresh[0]).exists()


def test_file_stem_falls_back_to_the_id():
    assert file_stem("///", "d7fa7570aaaa") == "chat-d7fa7570"
    assert file_stem("../../etc/passwd", "x" * 32) == "etc passwd"


def test_no_run_history_keeps_inputs_in_the_browser(app):
    """Gradio's run history would save every call's inputs (a user's own key among them)."""
    config = httpx.get(app.url + "config", timeout=10).json()
    assert config.get("run_history") is False
    assert httpx.get(app.url + "gradio_api/runs", timeout=10).status_code == 404
