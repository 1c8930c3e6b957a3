"""Rate limits (rate_limits.py, on the `limits` package) against a real redis-server and in
memory (the embedded mode), through ChatService's budgets, and the launched app's limits
(rate, message length, images per message, upload size, body size) as an API caller meets
them."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aredis
from gradio_client import Client, handle_file
from PIL import Image

from chat import ChatRateLimited, ChatService
from config import load_settings
from providers import Providers
from rate_limits import RateLimited, RateLimiter, ip_key, seconds_until_room, storage_for
from tests.app_server import AppServer
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream
from tests.servers import free_port

pytestmark = pytest.mark.anyio
PREFIX = "t:rate"


@pytest.fixture
async def client(redis_url):
    conn = aredis.from_url(redis_url)
    yield conn
    await conn.aclose()


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.e2e),
    ]
)
async def storage(request):
    """Each test on both storages: limits' memory storage (embedded) and a real Redis."""
    if request.param == "memory":
        yield storage_for(None)
        return
    conn = aredis.from_url(request.getfixturevalue("redis_url"))
    yield storage_for(conn, PREFIX)
    await conn.aclose()


def browser(n: int) -> str:
    return str(n) * 32


# -- the wait, exactly (limits' sliding-window counter) -------------------------------------
@pytest.mark.parametrize(
    ("limit", "cost", "counts", "wait"),
    [
        (3, 1, (0, 0.0, 0, 0.0), 0.0),  # nothing counted yet
        (3, 1, (0, 0.0, 3, 120.0), 60.0),  # a full window that just began: all of it
        (2, 1, (2, 59.5, 1, 119.5), 29.5),  # the previous window's weight must halve
        (10, 10, (0, 0.0, 10, 90.0), 84.0),  # a heavy hit waits for (almost) an empty window
        (10, 4, (0, 0.0, 10, 90.0), 48.0),  # a lighter one sooner
    ],
)
def test_the_wait_is_when_the_counter_has_room(limit, cost, counts, wait):
    assert seconds_until_room(limit, cost, 60, counts) == pytest.approx(wait)


def test_wait_is_never_zero():
    assert RateLimited(0.2).wait_seconds == 1
    assert RateLimited(59.01).wait_seconds == 60


async def test_allows_the_limit_then_says_how_long_to_wait(client):
    rl = RateLimiter(storage_for(client, PREFIX), per_client=3, per_ip=0)
    for _ in range(3):
        await rl.hit(browser(1), "10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        await rl.hit(browser(1), "10.0.0.1")
    # On Redis a window begins with its first hit: this one is full for its whole minute.
    assert refused.value.wait_seconds == 60
    assert str(refused.value) == "You are sending messages too fast: wait 60 s and try again."


# -- on both storages -------------------------------------------------------------------------
async def test_after_the_wait_there_is_room_and_the_window_slides(storage):
    rl = RateLimiter(storage, per_client=2, per_ip=0, window_s=1)
    await rl.hit(browser(2), None)
    await rl.hit(browser(2), None)
    with pytest.raises(RateLimited) as refused:
        await rl.hit(browser(2), None)
    assert 0 <= refused.value.retry_after <= 2
    await asyncio.sleep(refused.value.retry_after + 0.05)
    await rl.hit(browser(2), None)  # room again, exactly when it said
    await asyncio.sleep(2.1)  # two windows later everything has left
    await rl.hit(browser(2), None)
    await rl.hit(browser(2), None)


async def test_refused_hits_count_nowhere(storage):
    rl = RateLimiter(storage, per_client=2, per_ip=3)
    await rl.hit(browser(3), "198.51.100.7")
    await rl.hit(browser(3), "198.51.100.7")
    for _ in range(20):  # hammering while limited: the per-IP limit took each back
        with pytest.raises(RateLimited) as refused:
            await rl.hit(browser(3), "198.51.100.7")
        assert refused.value.scope == "client"
    await rl.hit(browser(4), "198.51.100.7")  # the third of the address's three
    with pytest.raises(RateLimited) as refused:
        await rl.hit(browser(5), "198.51.100.7")  # a fresh browser id does not help
    assert refused.value.scope == "ip"
    # Another address is not affected, and the browser's own count gave that hit back.
    await rl.hit(browser(5), "198.51.100.8")
    await rl.hit(browser(5), "198.51.100.8")
    with pytest.raises(RateLimited):
        await rl.hit(browser(5), "198.51.100.8")


async def test_loopback_is_not_limited_per_ip(storage):
    """127.0.0.1 is this machine or a proxy/tunnel without X-Forwarded-For (a share link):
    a per-IP limit there would throttle every user together. Browsers are still limited."""
    rl = RateLimiter(storage, per_client=2, per_ip=1)
    for n in (6, 7, 8):
        await rl.hit(browser(n), "127.0.0.1")
        await rl.hit(browser(n), "::1")
        with pytest.raises(RateLimited) as refused:
            await rl.hit(browser(n), "127.0.0.1")
        assert refused.value.scope == "client"
    assert [limit.scope for limit in rl.limits_for(browser(6), "::1")] == ["client"]


async def test_api_callers_are_limited_by_address(storage):
    rl = RateLimiter(storage, per_client=2, per_ip=10)
    await rl.hit(None, "192.0.2.1")
    await rl.hit(None, "192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        await rl.hit(None, "192.0.2.1")
    assert refused.value.scope == "client"
    await rl.hit(None, "192.0.2.2")
    await rl.hit(browser(5), "192.0.2.1")  # a browser at that address has its own count


async def test_concurrent_hits_never_exceed_the_limit(storage):
    rl = RateLimiter(storage, per_client=5, per_ip=7, per_global=50)

    async def one(n: int) -> bool:
        try:
            await rl.hit(browser(n), "10.1.1.1")
        except RateLimited:
            return False
        return True

    # A flood from one browser, and one other browser at that address in the middle of it:
    # the flood is refused by its own limit and never takes the address's shared count.
    *flood, other = await asyncio.gather(*(one(9) for _ in range(30)), one(8))
    assert sum(flood) == 5 and other
    await rl.hit(browser(7), "10.1.1.1")  # 7 of 7 per IP
    with pytest.raises(RateLimited):
        await rl.hit(browser(6), "10.1.1.1")


async def test_weighted_hits_the_clamp_and_forget(storage):
    rl = RateLimiter(storage, per_client=100, per_ip=0, per_global=10, name="pixels")
    await rl.hit(browser(1), "127.0.0.1", weight=6)
    await rl.hit(browser(2), "::1", weight=4)  # another browser, the same ceiling
    with pytest.raises(RateLimited) as refused:
        await rl.hit(browser(3), "127.0.0.1", weight=1)
    assert refused.value.scope == "global" and "Too many people" in str(refused.value)
    heavy = RateLimiter(storage, per_client=0, per_ip=0, per_global=10, name="heavy")
    hit = await heavy.hit(None, None, weight=50)  # heavier than the limit: fills it
    with pytest.raises(RateLimited):
        await heavy.hit(None, None)
    await heavy.forget(hit)  # taken back: the whole limit is free again
    await heavy.hit(None, None, weight=10)
    with pytest.raises(RateLimited):
        await heavy.hit(None, None)


async def test_one_is_one_and_zero_disables(storage):
    rl = RateLimiter(storage, per_client=1, per_ip=0)
    await rl.hit(browser(1), "::1")
    with pytest.raises(RateLimited):
        await rl.hit(browser(1), "::1")
    off = RateLimiter(storage, per_client=0, per_ip=0)
    assert not off.enabled
    for _ in range(50):
        assert await off.hit(browser(2), "10.3.3.3") is None


# -- Redis only --------------------------------------------------------------------------------
async def test_replicas_share_the_counts(redis_url):
    """Two processes' limiters (each its own client and storage) on one Redis: one count."""
    first, second = aredis.from_url(redis_url), aredis.from_url(redis_url)
    try:
        one = RateLimiter(storage_for(first, PREFIX), per_client=3, per_ip=0)
        other = RateLimiter(storage_for(second, PREFIX), per_client=3, per_ip=0)
        await one.hit(browser(1), None)
        await other.hit(browser(1), None)
        await one.hit(browser(1), None)
        with pytest.raises(RateLimited):
            await other.hit(browser(1), None)
    finally:
        await first.aclose()
        await second.aclose()


async def test_keys_live_under_the_prefix_and_expire(client):
    rl = RateLimiter(storage_for(client, PREFIX), per_client=2, per_ip=4, window_s=60)
    await rl.hit("d" * 32, "10.2.2.2")
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert len(keys) == 2 and all(k.startswith(PREFIX + ":") for k in keys), keys
    assert any("browser/" + "d" * 32 in k for k in keys) and any("10.2.2.2" in k for k in keys)
    for key in keys:  # limits keeps a window's counter for two windows
        assert 0 < await client.ttl(key) <= 120


async def test_fails_open_when_redis_is_unreachable():
    conn = aredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        rl = RateLimiter(storage_for(conn, PREFIX), per_client=1, per_ip=1)
        for _ in range(3):  # allowed: the history write reports the outage
            assert await rl.hit(browser(1), "10.4.4.4") is None
    finally:
        await conn.aclose()


# -- ChatService's budgets: memory when embedded, the history's Redis otherwise -------------
def service(redis_url: str | None = None) -> ChatService:
    env = app_env(None, redis_url, RATE_LIMIT_PER_MINUTE="2", DEMO_DELAY_MS="0")
    image_dir = Path(tempfile.mkdtemp(prefix="rate-img-"))
    return ChatService(load_settings(env), Providers(env, timeout_s=5), image_dir)


async def test_the_embedded_service_limits_turns_in_memory():
    chat = service()
    try:
        await chat.check_rate(browser(1), "10.5.5.5")
        await chat.check_rate(browser(1), "10.5.5.5")
        with pytest.raises(ChatRateLimited, match="You are sending messages too fast") as refused:
            await chat.check_rate(browser(1), "10.5.5.5")
        assert 1 <= refused.value.retry_after <= 60
        await chat.check_rate(browser(2), "10.5.5.5")  # another browser
    finally:
        await chat.aclose()


async def test_two_services_on_one_redis_share_the_turns(redis_url):
    one, other = service(redis_url), service(redis_url)
    try:
        await one.check_rate(browser(1), None)
        await other.check_rate(browser(1), None)
        with pytest.raises(ChatRateLimited):
            await one.check_rate(browser(1), None)
        keys = redis.Redis.from_url(redis_url).keys("chat:rate:*")
        assert keys, "the counts live in the history's Redis, under its prefix"
    finally:
        await one.aclose()
        await other.aclose()


def test_ip_keys():
    assert ip_key("203.0.113.9") == "203.0.113.9"
    assert ip_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert ip_key("::1") == "::1" and ip_key("127.0.0.1") == "127.0.0.1"
    # One /64 is one client: rotating the interface id does not buy more messages.
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key(None) is None and ip_key("") is None
    assert ip_key("testclient") == "testclient"
    junk = ip_key("a b\r\n" + "x" * 500)
    assert junk is not None and len(junk) <= 64 and " " not in junk and "\n" not in junk


# -- the launched app: rate, length, image count, upload size, body size -----------------------
LIMITS_ENV = {
    "RATE_LIMIT_PER_MINUTE": "3",
    "RATE_LIMIT_PER_IP_PER_MINUTE": "100",
    "MAX_MESSAGE_CHARS": "500",
    "MAX_IMAGES_PER_MESSAGE": "2",
    "MAX_IMAGE_MB": "0.1",
}


@pytest.fixture(scope="module")
def limits_app(redis_server):
    url = redis_server.url.replace("/0", "/5")
    conn = redis.Redis.from_url(url)
    conn.flushdb()  # our private server's database: ours to clear
    upstream = FakeUpstream().start()
    env = app_env(upstream, url, **LIMITS_ENV)
    try:
        with AppServer(env) as server:
            yield server, upstream, conn
    finally:
        upstream.close()
        conn.close()


def client_from(app: AppServer, ip: str) -> Client:
    """A caller at `ip`: the app trusts X-Forwarded-For from 127.0.0.1, like a local proxy."""
    return Client(app.url, verbose=False, headers={"X-Forwarded-For": ip})


def test_api_callers_are_rate_limited_per_address(limits_app):
    app, upstream, conn = limits_app
    upstream.reset()
    caller = client_from(app, "203.0.113.10")
    for n in range(3):
        assert caller.predict(message=f"m{n}", api_name="/chat")[0] == f"Echo: m{n}"
    conversations = len(conn.keys("chat:conv:*:meta"))
    with pytest.raises(Exception) as refused:
        caller.predict(message="one too many", api_name="/chat")
    message = str(refused.value)
    wait = re.fullmatch(r"You are sending messages too fast: wait (\d+) s and try again\.", message)
    assert wait and 1 <= int(wait.group(1)) <= 60, message
    # Refused before anything was stored or sent.
    assert len(upstream.requests) == 3
    assert len(conn.keys("chat:conv:*:meta")) == conversations
    # Another address is not affected; the limiter's keys live in the history's Redis.
    other = client_from(app, "203.0.113.11")
    assert other.predict(message="hello", api_name="/chat")[0] == "Echo: hello"
    [key] = conn.keys("chat:rate:*turns/api/203.0.113.10/*")
    assert conn.ttl(key) > 0
    assert "Traceback" not in app.log()


def test_input_limits_are_clear_refusals(limits_app, tmp_path):
    app, upstream, _ = limits_app
    upstream.reset()
    caller = client_from(app, "203.0.113.20")
    with pytest.raises(Exception, match=r"501 characters long; the limit is 500"):
        caller.predict(message="x" * 501, api_name="/chat")
    with pytest.raises(Exception, match=r"custom system prompt is 600 characters"):
        caller.predict(message="hi", role="custom", system_prompt="p" * 600, api_name="/chat")
    small = []
    for n in range(3):
        path = tmp_path / f"dot{n}.png"
        Image.new("RGB", (8, 8), (n * 60, 0, 0)).save(path)
        small.append(handle_file(path))
    with pytest.raises(Exception, match=r"3 images attached; at most 2"):
        caller.predict(message="look", images=small, api_name="/chat")
    big = tmp_path / "big.png"
    Image.effect_noise((400, 400), 100).convert("RGB").save(big)  # ~160 KB of noise
    assert big.stat().st_size > 0.1 * 1024 * 1024
    with pytest.raises(Exception, match=r"exceeds the maximum file size"):
        caller.predict(message="look", images=[handle_file(big)], api_name="/chat")
    with big.open("rb") as upload:  # a raw upload, bypassing the client's own check
        raw = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.png", upload)})
    assert raw.status_code == 413 and "maximum allowed size" in raw.text
    assert upstream.requests == [], "none of these reached the model"
    # None of the refusals counted against the rate limit (3 per minute).
    for n in range(3):
        assert caller.predict(message=f"ok {n}", api_name="/chat")[0] == f"Echo: ok {n}"


def test_huge_request_bodies_are_refused_unread(limits_app):
    app, _, _ = limits_app
    huge = httpx.post(
        app.url + "gradio_api/queue/join",
        content=b'{"data": ["' + b"x" * 3_000_000 + b'"]}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert huge.status_code == 413 and "too large" in huge.json()["error"]
    assert client_from(app, "203.0.113.30").predict(message="fine", api_name="/chat")[0] == (
        "Echo: fine"
    )
