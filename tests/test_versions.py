"""Versions and branches (conversation_tree), through the chat service on Redis and on the
embedded store: retry and compare keep every answer, an edit starts a branch, switching a
version shows its branch and is what the model sees next; feedback is stored with the answer."""

from __future__ import annotations

import copy

import pytest

import conversation_tree as tree
from chat import ChatError, ChatService, TurnRequest
from config import load_settings
from history import new_id
from providers import Providers
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, error, reply

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(params=["redis", "embedded"])
async def service(request, upstream, tmp_path):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    environ = app_env(upstream, url, RATE_LIMIT_PER_MINUTE="100")
    made = ChatService(load_settings(environ), Providers(environ), image_dir=tmp_path)
    yield made
    await made.aclose()


async def run(updates) -> list:
    return [copy.copy(update) async for update in updates]


def ask(text: str = "", cid: str = "", browser: str | None = None, **kw) -> TurnRequest:
    return TurnRequest(text=text, provider="openai", conversation_id=cid, browser_id=browser, **kw)


async def stored(service: ChatService, cid: str) -> list[dict]:
    return await (await service.store()).get_messages(cid)


async def test_retry_keeps_every_answer_and_switching_changes_the_context(service, upstream):
    upstream.script(reply("first"), reply("second"), reply("third"))
    browser = new_id()
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    await run(service.retry(ask(cid=cid, browser=browser, model="gpt-4o-mini")))
    await run(service.retry(ask(cid=cid, browser=browser)))
    history = await service.history(cid)
    assert len(history) == 2
    answer = history[1]
    assert answer["content"] == "third" and answer["version"] == 2
    assert [v["content"] for v in answer["versions"]] == ["first", "second", "third"]
    assert all({"content", "provider", "model"} <= set(v) for v in answer["versions"])
    assert answer["versions"][1]["model"] == "gpt-4o-mini"
    assert "after" not in str(history), "branches stay inside the store"
    # Switch to the first version: it is shown and it is what the model reads next.
    opened = await service.switch_version(browser, cid, 1, 0)
    assert opened.messages[1]["content"] == "first"
    assert (await service.history(cid))[1]["version"] == 0
    await run(service.turn(ask("next", cid=cid, browser=browser)))
    sent = [m["content"] for m in upstream.requests[-1]["messages"][1:]]
    assert sent == ["q", "first", "next"]


async def test_an_edit_is_a_branch_with_its_own_answers(service, upstream):
    browser = new_id()
    cid = (await run(service.turn(ask("one", browser=browser))))[-1].conversation_id
    await run(service.turn(ask("two", cid=cid, browser=browser)))
    final = (await run(service.edit_shown(ask("uno", cid=cid, browser=browser), 0)))[-1]
    assert final.answer == "Echo: uno"
    path = await stored(service, cid)
    assert [m["content"] for m in path] == ["uno", "Echo: uno"]
    assert tree.version_count(path[0]) == 2 and tree.shown_version(path[0]) == 1
    # Back to the first version of the message: its whole branch returns.
    opened = await service.switch_version(browser, cid, 0, 0)
    assert [m["content"] for m in opened.messages] == ["one", "Echo: one", "two", "Echo: two"]
    assert [m["content"] for m in await stored(service, cid)] == [
        "one",
        "Echo: one",
        "two",
        "Echo: two",
    ]
    # ...and forward again to the edited one, with its answer.
    opened = await service.switch_version(browser, cid, 0, 1)
    assert [m["content"] for m in opened.messages] == ["uno", "Echo: uno"]
    # The edit box starts from the shown text, arrows included: they are not the message.
    shown = "uno\n\n[‹](#mmchat-version-0-0) 2 / 2 ›"
    await run(service.edit_shown(ask(shown.replace("uno", "dos"), cid=cid, browser=browser), 0))
    assert (await stored(service, cid))[0]["content"] == "dos"


async def test_a_failed_answer_is_replaced_not_kept(service, upstream):
    browser = new_id()
    upstream.script(reply("good"))
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    upstream.script(error(400, {"error": {"message": "boom"}}))
    await run(service.retry(ask(cid=cid, browser=browser)))
    failed = (await stored(service, cid))[-1]
    assert failed["status"] == "error" and tree.version_count(failed) == 2
    upstream.script(reply("fixed"))
    await run(service.retry(ask(cid=cid, browser=browser)))
    answer = (await service.history(cid))[-1]
    assert [v["content"] for v in answer["versions"]] == ["good", "fixed"]


async def test_switching_is_checked(service, upstream):
    browser = new_id()
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    with pytest.raises(ChatError, match="version does not exist"):
        await service.switch_version(browser, cid, 1, 3)
    with pytest.raises(ChatError):
        await service.switch_version(browser, cid, 7, 0)
    with pytest.raises(ChatError, match="no longer available"):
        await service.switch_version(new_id(), cid, 1, 0)  # another browser's chat


async def test_versions_are_bounded(service, upstream):
    browser = new_id()
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    for _ in range(tree.MAX_VERSIONS + 2):
        await run(service.retry(ask(cid=cid, browser=browser)))
    answer = (await stored(service, cid))[-1]
    assert tree.version_count(answer) == tree.MAX_VERSIONS
    assert tree.shown_version(answer) == tree.MAX_VERSIONS - 1


async def test_feedback_is_stored_with_the_answer_and_exported(service, upstream):
    browser = new_id()
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    before = (await (await service.store()).get_meta(cid))["updated"]
    rated = await service.set_feedback(browser, cid, 1, "up")
    assert rated[1]["feedback"] == "up"
    assert (await stored(service, cid))[1]["feedback"] == "up"
    meta = await (await service.store()).get_meta(cid)
    assert meta["updated"] == before, "a thumb does not move the chat up the list"
    exported = await (await service.store()).export_json(cid)
    assert exported["messages"][1]["feedback"] == "up"
    await service.set_feedback(browser, cid, 1, None)
    assert "feedback" not in (await stored(service, cid))[1]
    with pytest.raises(ChatError, match="Only an answer"):
        await service.set_feedback(browser, cid, 0, "down")
    with pytest.raises(ChatError):
        await service.set_feedback(browser, cid, 1, "love")


async def test_bytes_follow_versions(service, upstream):
    browser = new_id()
    upstream.script(reply("x" * 1000), reply("y" * 1000))
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    store = await service.store()
    one = await store.stored_bytes(browser)
    await run(service.retry(ask(cid=cid, browser=browser)))
    two = await store.stored_bytes(browser)
    assert two > one + 900, "a kept version is charged"


async def test_export_and_import_carry_versions_branches_feedback_and_pins(service, upstream):
    browser = new_id()
    upstream.script(reply("A1"), reply("A2"))
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    await run(service.retry(ask(cid=cid, browser=browser)))
    await run(service.edit_shown(ask("q2", cid=cid, browser=browser), 0))  # a branch
    await service.set_feedback(browser, cid, 1, "down")
    store = await service.store()
    await store.update_meta(cid, pinned="1")
    exported = await store.export_json(cid)
    assert exported["version"] == 2
    copy_id = await service.import_conversation(exported, browser, None)
    original, imported = await stored(service, cid), await stored(service, copy_id)
    assert without_empty_images(imported) == without_empty_images(original), (
        "every version, branch and thumb came back"
    )
    meta = await store.get_meta(copy_id)
    assert meta["pinned"] == "1" and meta["title"] == "q (2)"
    # The old branch is there to switch to: q, then its two versions of the answer.
    opened = await service.switch_version(browser, copy_id, 0, 0)
    assert [m["content"] for m in opened.messages] == ["q", "A2"]
    assert [v["content"] for v in tree.versions_of(opened.messages[1])] == ["A1", "A2"]


def without_empty_images(value):
    """An export leaves out an empty image list: the same message."""
    if isinstance(value, list):
        return [without_empty_images(v) for v in value]
    if isinstance(value, dict):
        return {k: without_empty_images(v) for k, v in value.items() if v != [] or k != "images"}
    return value


async def test_a_thumb_by_the_chat_s_index_rates_that_answer(service, upstream):
    browser = new_id()
    cid = (await run(service.turn(ask("q", browser=browser))))[-1].conversation_id
    shown, positions = await service.display_indexed(cid)
    answer, question = positions.index(1), positions.index(0)
    rated = await service.set_feedback_shown(browser, cid, answer, "up")
    assert rated is not None and rated[1]["feedback"] == "up"
    assert await service.set_feedback_shown(browser, cid, question, "down") is None
    assert "feedback" not in (await stored(service, cid))[0]
