"""HistoryStore.search_conversations (history_search.py) on a real redis-server and embedded."""

from __future__ import annotations

import time
import unicodedata

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import history
from history import HistoryStore, HistoryUnavailable, InvalidId, SearchHit
from history_search import MAX_QUERY_CHARS, fold, original_span, query_terms, snippet
from tests.servers import RedisServer
from tests.test_history import replica  # another process's store: a cold cache

pytestmark = pytest.mark.anyio

TTL = 3600
ACL_USER = "search-test"
LONG = (
    "Some opening words that go on for a while before the point is reached, and then "
    "the   travel\n\n plans for Beijing are discussed at length, with dates, trains and "
    "hotels, and a closing paragraph that also goes on for quite a while after it."
)


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.e2e),
        pytest.param("redis-acl", marks=pytest.mark.e2e),
        "embedded",
    ]
)
async def store(request):
    """redis: titles in one SORT_RO; redis-acl: a user limited to the store's keys, which
    SORT's GET is refused for, so titles come in a pipeline; embedded: fakeredis."""
    url = None
    if request.param != "embedded":
        url = request.getfixturevalue("redis_url")
    if request.param == "redis-acl":
        admin = redis.Redis.from_url(url)
        admin.execute_command("ACL", "SETUSER", ACL_USER, "reset", "on", ">pw", "~t:*", "+@all")
        request.addfinalizer(
            lambda: (admin.execute_command("ACL", "DELUSER", ACL_USER), admin.close())
        )
        url = url.replace("redis://", f"redis://{ACL_USER}:pw@")
    store = await HistoryStore.connect(url, ttl_seconds=TTL, prefix="t:")
    yield store
    await store.close()


async def chat(store: HistoryStore, browser: str, *texts: str, title: str = "") -> str:
    """A conversation of `texts`, alternately user and assistant messages."""
    cid = await store.create_conversation(browser, title=title)
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    if messages:
        await store.append_turn(cid, messages, browser_id=browser)
    return cid


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.id for hit in hits]


# ---- matching ------------------------------------------------------------------------------


async def test_title_match_has_no_snippet(store):
    browser = history.new_id()
    cid = await chat(store, browser, "nothing to see", title="Trip planning")
    await chat(store, browser, "other words", title="Groceries")
    hits = await store.search_conversations(browser, "trip")
    assert hits == [SearchHit(cid, "Trip planning", hits[0].updated, "", "title")]
    assert hits[0].updated == pytest.approx(time.time(), abs=60)


async def test_message_match_shows_the_match(store):
    browser = history.new_id()
    cid = await chat(store, browser, "How do I bake bread?", "Knead the dough for ten minutes.")
    [hit] = await store.search_conversations(browser, "dough")
    assert (hit.id, hit.where, hit.title) == (cid, "message", "")
    assert hit.snippet == "Knead the dough for ten minutes."


async def test_case_insensitive_in_titles_and_messages(store):
    browser = history.new_id()
    in_message = await chat(store, browser, "well, HeLLo there")
    in_title = await chat(store, browser, "x", title="hello world")
    for query in ("hello", "HELLO", "HeLLo"):
        hits = await store.search_conversations(browser, query)
        assert set(ids(hits)) == {in_message, in_title}
    [hit] = [h for h in hits if h.id == in_message]
    assert hit.snippet == "well, HeLLo there"  # the original's case, not the folded text


async def test_chinese_and_full_width(store):
    browser = history.new_id()
    cid = await chat(store, browser, "请问今天北京天气怎么样？适合出门吗", title="出行")
    width = await chat(store, browser, "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ text")
    [hit] = await store.search_conversations(browser, "北京天气")
    assert (hit.id, hit.where) == (cid, "message")
    assert "北京天气" in hit.snippet
    assert ids(await store.search_conversations(browser, "出行")) == [cid]
    assert ids(await store.search_conversations(browser, "上海天气")) == []
    assert ids(await store.search_conversations(browser, "abc")) == [width]  # NFKC


async def test_every_term_must_occur(store):
    browser = history.new_id()
    both = await chat(store, browser, "an apple a day", "and a banana too")
    split = await chat(store, browser, "banana bread", title="Apple pie")
    await chat(store, browser, "only an apple here")
    hits = await store.search_conversations(browser, "  apple   BANANA ")
    assert set(ids(hits)) == {both, split}
    by_id = {hit.id: hit for hit in hits}
    assert by_id[split].where == "message"  # one term in the title, one in a message
    assert "banana" in by_id[split].snippet
    assert "apple" in by_id[both].snippet  # the first term's match
    assert await store.search_conversations(browser, "apple cherry") == []


async def test_snippet_is_short_collapsed_and_marked_where_cut(store):
    browser = history.new_id()
    await chat(store, browser, LONG)
    [hit] = await store.search_conversations(browser, "PLANS")
    assert "travel plans for Beijing" in hit.snippet  # whitespace collapsed
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert 70 <= len(hit.snippet) <= 84


async def test_versions_are_searched_and_odd_contents_skipped(store):
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    answer = {
        "role": "assistant",
        "content": "the answer shown",
        "version": 1,
        "versions": [
            {"role": "assistant", "content": "an Earlier Draft", "after": []},
            None,
            "junk",
        ],
    }
    odd = {"role": "user", "content": [{"type": "text", "text": "listed"}], "versions": 5}
    await store.append_turn(cid, [odd, answer], browser_id=browser)
    [hit] = await store.search_conversations(browser, "earlier draft")
    assert (hit.id, hit.snippet) == (cid, "an Earlier Draft")
    assert ids(await store.search_conversations(browser, "shown")) == [cid]
    assert await store.search_conversations(browser, "listed") == []


async def test_newest_first_and_limit(store):
    browser = history.new_id()
    cids = [await chat(store, browser, f"note {i}") for i in range(5)]
    await store.append_turn(cids[1], [{"role": "user", "content": "note again"}])
    expected = [cids[1], cids[4], cids[3], cids[2], cids[0]]
    assert ids(await store.search_conversations(browser, "note")) == expected
    assert ids(await store.search_conversations(browser, "note", limit=2)) == expected[:2]
    assert await store.search_conversations(browser, "note", limit=0) == []


# ---- isolation and freshness -----------------------------------------------------------------


async def test_other_browsers_conversations_never_appear(store):
    mine, theirs = history.new_id(), history.new_id()
    own = await chat(store, mine, "secret plan", title="secret")
    other = await chat(store, theirs, "secret plan", title="secret")
    assert ids(await store.search_conversations(mine, "secret plan")) == [own]
    assert ids(await store.search_conversations(theirs, "secret")) == [other]
    # Even an index entry pointing at another browser's conversation is not shown.
    await store.redis.zadd(f"{store.prefix}browser:{mine}:convs", {other: time.time() + 9})
    assert ids(await store.search_conversations(mine, "secret")) == [own]


async def test_a_changed_conversation_is_found_by_its_new_text(store):
    browser = history.new_id()
    cid = await chat(store, browser, "first words")
    assert await store.search_conversations(browser, "zebra") == []  # cached now
    await store.append_turn(cid, [{"role": "user", "content": "a Zebra appears"}])
    [hit] = await store.search_conversations(browser, "zebra")
    assert (hit.id, hit.snippet) == (cid, "a Zebra appears")
    # Another replica writes: this store's cache is checked against the score in Redis.
    await replica(store).append_turn(cid, [{"role": "user", "content": "then a giraffe"}])
    assert ids(await store.search_conversations(browser, "giraffe zebra")) == [cid]
    await store.pop_messages(cid, 2)
    assert await store.search_conversations(browser, "zebra") == []


async def test_a_renamed_conversation_is_found_by_its_new_title(store):
    browser = history.new_id()
    cid = await chat(store, browser, "text", title="Old name")
    assert ids(await store.search_conversations(browser, "old")) == [cid]
    await store.update_meta(cid, title="Fresh name")
    assert await store.search_conversations(browser, "old") == []
    [hit] = await store.search_conversations(browser, "fresh")
    assert (hit.id, hit.title, hit.where) == (cid, "Fresh name", "title")


async def test_deleted_conversations_vanish(store):
    browser = history.new_id()
    gone = await chat(store, browser, "ephemeral words")
    kept = await chat(store, browser, "ephemeral too")
    assert set(ids(await store.search_conversations(browser, "ephemeral"))) == {gone, kept}
    await store.delete_conversation(gone)
    assert ids(await store.search_conversations(browser, "ephemeral")) == [kept]
    await store.redis.delete(f"{store.prefix}conv:{kept}:meta")  # as if it expired
    assert await store.search_conversations(browser, "ephemeral") == []


# ---- bounds and failures ---------------------------------------------------------------------


async def test_query_bounds(store):
    browser = history.new_id()
    cid = await chat(store, browser, "hello there")
    for empty in ("", "   ", "\n\t", "\u3000"):
        assert await store.search_conversations(browser, empty) == []
    started = time.perf_counter()
    assert await store.search_conversations(browser, "x" * 10_000) == []
    assert ids(await store.search_conversations(browser, "hello " * 2_000)) == [cid]
    # Only the first MAX_QUERY_CHARS count: a term past them is not required.
    tail = "hello" + " " * MAX_QUERY_CHARS + "missing"
    assert ids(await store.search_conversations(browser, tail)) == [cid]
    assert time.perf_counter() - started < 1
    with pytest.raises(InvalidId, match="Malformed"):
        await store.search_conversations("../../etc", "hello")


@pytest.mark.e2e  # its own redis-server
async def test_redis_down_is_history_unavailable():
    server = RedisServer().start()
    try:
        store = await HistoryStore.connect(server.url)
        browser = history.new_id()
        await chat(store, browser, "before")
        server.stop()
        with pytest.raises(HistoryUnavailable, match=r"^History store \(Redis\) is unreachable"):
            await store.search_conversations(browser, "before")
        await store.close()
    finally:
        server.close()


# ---- the text helpers ------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_fold_is_nfkc_then_casefold(text):
    """fold's shortcuts (ASCII, common full-width punctuation) change nothing."""
    assert fold(text) == unicodedata.normalize("NFKC", text).casefold()
    assert (
        fold(text + "，…\u3000Ａ") == unicodedata.normalize("NFKC", text + "，…\u3000Ａ").casefold()
    )


def test_fold_and_terms():
    assert fold("Straße ＡＢＣ ﬁle") == "strasse abc file"
    assert query_terms("  Foo foo\u3000北京 ") == ["foo", "北京"]
    assert query_terms(None) == []


def test_original_span_where_folding_changes_lengths():
    text = "Die Straße ist GROSS"
    folded = fold(text)
    start = folded.find("strasse")
    assert text[slice(*original_span(text, start, start + 7))] == "Straße"
    start = folded.find("gross")
    assert text[slice(*original_span(text, start, start + 5))] == "GROSS"
    long = "ß" * 10_000 + " ﬁle Ｍatch"  # ligature and full-width: both change the folded form
    folded = fold(long)
    start = folded.find("match")
    assert long[slice(*original_span(long, start, start + 5))] == "Ｍatch"
    start = folded.find("ile")
    assert long[slice(*original_span(long, start, start + 3))] == "ﬁle"


def test_snippet_edges():
    assert snippet("abc", 0, 3) == "abc"
    text = "a" * 200 + "MATCH" + "b" * 5
    out = snippet(text, 200, 205)
    assert out.startswith("…") and out.endswith("MATCHbbbbb") and len(out) == 81


async def test_warming_reads_what_a_search_reads_once(store):
    """The page warms the cache when the search box gets the focus: the first keystroke's
    search then reads no message list at all."""
    browser = history.new_id()
    for n in range(40):
        await chat(store, browser, f"question {n}", f"answer {n} with a needle")
    fresh = replica(store)
    assert await fresh.warm_search(browser) == 40
    reads: list[str] = []
    real = fresh._r.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = real(*args, **kwargs)
        lrange = pipe.lrange
        pipe.lrange = lambda key, *a: (reads.append(key), lrange(key, *a))[1]
        return pipe

    fresh._r.pipeline = counting_pipeline
    try:
        assert len(await fresh.search_conversations(browser, "needle")) == 40
    finally:
        fresh._r.pipeline = real
    assert reads == [], "every conversation came from the cache"
