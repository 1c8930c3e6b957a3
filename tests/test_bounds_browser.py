"""The bounds of issue 13 as a user meets them in Chromium: at the defaults a message with
eight photos goes through; past a quota the refusal is a toast and nothing typed is lost."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from tests.app_server import AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    INPUT,
    TOAST,
    USER,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as server:
        yield server


def test_eight_photos_in_one_message_work_at_the_defaults(
    redis_url, upstream, new_context, tmp_path
):
    photos = []
    for i in range(8):  # photo-like noise: ~1.4 MB each, re-encoded on the way
        path = tmp_path / f"photo{i}.png"
        Image.frombytes("RGB", (800, 600), os.urandom(800 * 600 * 3)).save(path)
        photos.append(path)
    with AppServer(app_env(upstream, redis_url)) as app:
        chat = ChatPage(new_context().new_page(), app.url).open()
        chat.send("Eight photos", photos)
        chat.wait_for_answer("Echo: Eight photos")
        assert chat.page.locator(f"{USER} img").count() == 8
        content = [m for m in upstream.requests[-1]["messages"] if m["role"] == "user"][-1]
        assert len([p for p in content["content"] if p.get("type") == "image_url"]) == 8
        shot(chat.page, "bounds-eight-photos")


def test_past_the_storage_quota_a_toast_says_what_to_do_and_the_text_stays(
    redis_url, upstream, new_context
):
    with AppServer(app_env(upstream, redis_url, MAX_STORED_MB_PER_BROWSER="0.01")) as app:
        chat = ChatPage(new_context().new_page(), app.url).open()
        first = "a" * 6000
        chat.send(first, wait=False)
        chat.wait_idle()
        second = "This one is refused " + "b" * 6000
        # Not chat.send: the refused message shows only for a moment (the chat is redrawn
        # from what was stored, with the refusal under it), so its bubble may never be seen.
        chat.type(second)
        chat.page.locator(INPUT).press("Enter")
        chat.page.wait_for_selector(TOAST)
        chat.wait_idle()
        toast = chat.toast()
        assert "This browser stores" in toast and "Delete old conversations" in toast
        assert chat.input_text() == second, "the refused message is back in the box"
        shot(chat.page, "bounds-storage-quota")
