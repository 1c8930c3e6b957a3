"""Usage and cost, bring-your-own-key, edit, regenerate-to-compare, generation settings."""

from __future__ import annotations

import copy
import logging

import pytest
import redis
from PIL import Image

from chat import ChatService, TurnRequest
from config import load_settings
from model_facts import price_of
from providers import Providers
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, reply
from token_usage import conversation_usage, usage_summary

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
async def service(redis_url, upstream, tmp_path):
    # Kimi has no key on the server: only a user's own key can enable it.
    environ = app_env(upstream, redis_url, MOONSHOT_BASE_URL=upstream.base_url)
    made = ChatService(load_settings(environ), Providers(environ), image_dir=tmp_path)
    yield made
    await made.aclose()


async def run(updates) -> list:
    return [copy.copy(update) async for update in updates]


async def test_usage_from_the_provider_with_cost(service, upstream, tmp_path):
    image = tmp_path / "square.png"
    Image.new("RGB", (1024, 1024), (10, 200, 10)).save(image)
    request = TurnRequest(
        text="hi", images=[str(image)], provider="openai", model="gpt-4o", detail="high"
    )
    final = (await run(service.turn(request)))[-1]
    usage = final.usage
    assert usage["estimated"] is False, "openai streams include_usage"
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["image_tokens"] == 765, "a 1024x1024 high-detail image on gpt-4o"
    price = price_of("gpt-4o")
    expected = usage["prompt_tokens"] * price.input + usage["completion_tokens"] * price.output
    assert usage["cost"] == pytest.approx(expected / 1_000_000, rel=1e-3)
    assert usage["currency"] == "USD"
    stored = await service.history(final.conversation_id)
    assert stored[-1]["usage"] == usage
    assert "in ·" in usage_summary(usage) and "$" in usage_summary(usage)


async def test_usage_is_estimated_and_marked_when_the_provider_gives_none(service, upstream):
    request = TurnRequest(
        text="hello", provider="kimi", model="moonshot-v1-8k", api_keys={"kimi": "sk-user-kimi"}
    )
    final = (await run(service.turn(request)))[-1]
    assert "stream_options" not in upstream.requests[-1], "kimi is not asked for usage"
    assert final.usage["estimated"] is True
    assert final.usage["completion_tokens"] > 0
    assert usage_summary(final.usage).startswith("~")
    second = TurnRequest(
        text="again",
        provider="kimi",
        model="moonshot-v1-8k",
        api_keys={"kimi": "sk-user-kimi"},
        conversation_id=final.conversation_id,
    )
    await run(service.turn(second))
    total = conversation_usage(await service.history(final.conversation_id))
    assert total.startswith("2 replies · ~") and "¥" in total


async def test_own_key_enables_a_provider_and_is_never_stored_or_logged(
    service, upstream, redis_url, caplog
):
    with pytest.raises(Exception, match="not configured|MOONSHOT"):
        await run(service.turn(TurnRequest(text="hi", provider="kimi")))
    caplog.set_level(logging.DEBUG)
    request = TurnRequest(text="hi", provider="kimi", api_keys={"kimi": "sk-user-SECRET-42"})
    final = (await run(service.turn(request)))[-1]
    assert final.status == "complete"
    assert upstream.headers[-1]["authorization"] == "Bearer sk-user-SECRET-42"
    dump = redis.Redis.from_url(redis_url)
    everything = b"".join(str(dump.dump(key)).encode() for key in dump.scan_iter("*"))
    assert b"SECRET-42" not in everything
    assert "SECRET-42" not in caplog.text
    assert "SECRET-42" not in str(await service.history(final.conversation_id))


async def test_edit_a_message_and_answer_again_from_there(service, upstream):
    first = (await run(service.turn(TurnRequest(text="one", provider="openai"))))[-1]
    cid = first.conversation_id
    await run(service.turn(TurnRequest(text="two", provider="openai", conversation_id=cid)))
    edit = TurnRequest(text="uno", provider="openai", conversation_id=cid)
    final = (await run(service.edit_shown(edit, 0)))[-1]
    assert final.answer == "Echo: uno"
    stored = await service.history(cid)
    assert [m["content"] for m in stored] == ["uno", "Echo: uno"]
    assert upstream.requests[-1]["messages"][1:] == [{"role": "user", "content": "uno"}]
    with pytest.raises(Exception, match="Only your own messages"):
        await run(service.edit_shown(edit, 1))


async def test_regenerate_with_another_model_keeps_both(service, upstream):
    upstream.script(reply("answer from 4o"), reply("answer from mini"))
    first = await run(service.turn(TurnRequest(text="q", provider="openai", model="gpt-4o")))
    cid = first[-1].conversation_id
    other = TurnRequest(provider="openai", model="gpt-4o-mini", conversation_id=cid)
    await run(service.retry(other))
    stored = await service.history(cid)
    assert [(m["role"], m.get("model")) for m in stored] == [
        ("user", None),
        ("assistant", "gpt-4o-mini"),
    ]
    versions = stored[1]["versions"]
    assert stored[1]["version"] == 1 and len(versions) == 2
    assert [v["content"] for v in versions] == ["answer from 4o", "answer from mini"]
    assert [v["model"] for v in versions] == ["gpt-4o", "gpt-4o-mini"]
    await run(service.turn(TurnRequest(text="next", provider="openai", conversation_id=cid)))
    sent = upstream.requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == ["q", "answer from mini", "next"], (
        "only the version shown goes on as context"
    )


async def test_generation_settings_are_sent_and_kept_with_the_conversation(service, upstream):
    request = TurnRequest(
        text="hi", provider="openai", model="gpt-4o", temperature=0.2, top_p=0.5, max_tokens=123
    )
    final = (await run(service.turn(request)))[-1]
    body = upstream.requests[-1]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.5, 123)
    meta = await (await service.store()).get_meta(final.conversation_id)
    assert (meta["temperature"], meta["top_p"], meta["max_tokens"]) == ("0.2", "0.5", "123")


def test_price_table_has_a_date_and_falls_back_to_the_model_after_the_slash():
    from model_facts import load_prices

    as_of, prices = load_prices()
    assert as_of and prices
    assert price_of("openai/gpt-4o-mini") == prices["gpt-4o-mini"]
    assert price_of("no-such-model") is None
