"""Abuse limits: the rate limiter (limits.py) against a real redis-server and the embedded
fakeredis, the request-size guard, and the launched app's limits (rate, message length, images
per message, upload size, body size) as an API caller meets them."""

from __future__ import annotations

import asyncio
import re

import fakeredis
import httpx
import pytest
import redis
import redis.asyncio as aredis
from gradio_client import Client, handle_file
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from limits import (
    BodySizeLimit,
    RateLimited,
    RateLimiter,
    SecurityHeaders,
    UnknownEndpoint,
    ip_key,
    max_body_bytes,
)
from tests.app_server import AppServer
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream
from tests.servers import free_port

pytestmark = pytest.mark.anyio


class Clock:
    """A settable clock: the window maths is checked exactly, without sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url):
    conn = aredis.from_url(redis_url)
    yield conn
    await conn.aclose()


def limiter(conn, clock: Clock, per_client: int = 3, per_ip: int = 0) -> RateLimiter:
    return RateLimiter(conn, per_client=per_client, per_ip=per_ip, clock=clock, prefix="t:rate:")


async def test_allows_the_limit_then_says_how_long_to_wait(client):
    clock = Clock()
    rl = limiter(client, clock)
    for step in range(3):
        clock.now += 10 * (step > 0)  # messages at t = 0, 10, 20
        await rl.hit("b" * 32, "10.0.0.1")
    clock.now += 10  # t = 30: the first message leaves the window at t = 60
    with pytest.raises(RateLimited) as refused:
        await rl.hit("b" * 32, "10.0.0.1")
    assert refused.value.wait_seconds == 30
    assert str(refused.value) == "You are sending messages too fast: wait 30 s and try again."


async def test_refused_attempts_do_not_count_and_the_window_slides(client):
    clock = Clock()
    rl = limiter(client, clock, per_client=2)
    await rl.hit("a" * 32, None)
    clock.now += 30
    await rl.hit("a" * 32, None)
    for _ in range(20):  # hammering while limited must not push the wait further out
        clock.now += 1
        with pytest.raises(RateLimited) as refused:
            await rl.hit("a" * 32, None)
    assert refused.value.wait_seconds == 10  # t = 50: the first (t = 0) expires at 60
    clock.now += 10.5
    await rl.hit("a" * 32, None)  # one slot free again
    with pytest.raises(RateLimited) as refused:
        await rl.hit("a" * 32, None)
    assert refused.value.wait_seconds == 30  # t = 60.5: the t = 30 message is the oldest


async def test_per_ip_limit_spans_browsers_and_ips_are_separate(client):
    clock = Clock()
    rl = limiter(client, clock, per_client=5, per_ip=3)
    for browser in ("1" * 32, "2" * 32, "3" * 32):
        await rl.hit(browser, "198.51.100.7")
    with pytest.raises(RateLimited) as refused:
        await rl.hit("4" * 32, "198.51.100.7")  # a fresh browser id does not help
    assert refused.value.scope == "ip"
    await rl.hit("4" * 32, "198.51.100.8")  # another address is not affected


async def test_loopback_is_not_limited_per_ip(client):
    """127.0.0.1 is this machine or a proxy/tunnel without X-Forwarded-For (a share link):
    a per-IP limit there would throttle every user together. Browsers are still limited."""
    clock = Clock()
    rl = limiter(client, clock, per_client=2, per_ip=1)
    for browser in ("6" * 32, "7" * 32, "8" * 32):
        await rl.hit(browser, "127.0.0.1")
        await rl.hit(browser, "::1")
        with pytest.raises(RateLimited):
            await rl.hit(browser, "127.0.0.1")
    assert not await client.keys("t:rate:ip:*")


async def test_api_callers_are_limited_by_address(client):
    clock = Clock()
    rl = limiter(client, clock, per_client=2, per_ip=10)
    await rl.hit(None, "192.0.2.1")
    await rl.hit(None, "192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        await rl.hit(None, "192.0.2.1")
    assert refused.value.scope == "client"
    await rl.hit(None, "192.0.2.2")
    await rl.hit("5" * 32, "192.0.2.1")  # a browser at that address has its own count


async def test_concurrent_messages_never_exceed_the_limit(client):
    rl = RateLimiter(client, per_client=5, per_ip=0, prefix="t:rate:")

    async def one() -> bool:
        try:
            await rl.hit("c" * 32, "10.1.1.1")
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(30)))
    assert sum(results) == 5
    assert await client.zcard("t:rate:browser:" + "c" * 32) == 5


async def test_keys_expire_and_zero_disables(client):
    clock = Clock()
    rl = limiter(client, clock, per_client=2, per_ip=4)
    await rl.hit("d" * 32, "10.2.2.2")
    keys = sorted(k.decode() for k in await client.keys("t:rate:*"))
    assert keys == ["t:rate:browser:" + "d" * 32, "t:rate:ip:10.2.2.2"]
    for key in keys:
        assert 0 < await client.ttl(key) <= 61

    off = limiter(client, clock, per_client=0, per_ip=0)
    assert not off.enabled
    for _ in range(50):
        await off.hit("e" * 32, "10.3.3.3")
    assert not await client.keys("t:rate:*eeee*")


async def test_fails_open_when_redis_is_unreachable():
    conn = aredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        rl = RateLimiter(conn, per_client=1, per_ip=1)
        for _ in range(3):
            await rl.hit("f" * 32, "10.4.4.4")  # allowed: the history write reports the outage
    finally:
        await conn.aclose()


async def test_works_on_the_embedded_store():
    conn = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    clock = Clock()
    rl = limiter(conn, clock, per_client=1)
    await rl.hit("g" * 32, "::1")
    with pytest.raises(RateLimited):
        await rl.hit("g" * 32, "::1")
    await rl.reset("g" * 32, "::1")
    await rl.hit("g" * 32, "::1")


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


def test_wait_is_never_zero():
    assert RateLimited(0.2).wait_seconds == 1
    assert RateLimited(59.01).wait_seconds == 60


# -- request-size guard ------------------------------------------------------------------
async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def guarded_app() -> Starlette:
    routes = [
        Route("/gradio_api/queue/join", echo_length, methods=["POST"]),
        Route("/gradio_api/upload", echo_length, methods=["POST"]),
        Route("/api/other", echo_length, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BodySizeLimit, max_bytes=1000)])


async def test_body_size_limit_refuses_big_bodies_before_reading_them():
    transport = httpx.ASGITransport(app=guarded_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        ok = await http.post("/gradio_api/queue/join", content=b"x" * 1000)
        assert ok.json() == {"bytes": 1000}
        big = await http.post("/gradio_api/queue/join", content=b"x" * 1001)
        assert big.status_code == 413 and "too large" in big.json()["error"]

        async def chunks():  # no Content-Length: counted while it streams
            for _ in range(5):
                yield b"y" * 400

        streamed = await http.post("/gradio_api/queue/join", content=chunks())
        assert streamed.status_code == 413
        # Uploads have Gradio's max_file_size; other apps' routes are not ours to judge.
        assert (await http.post("/gradio_api/upload", content=b"z" * 5000)).status_code == 200
        assert (await http.post("/api/other", content=b"z" * 5000)).status_code == 200


def test_max_body_allows_the_longest_message():
    import json

    limit = 20_000
    payload = {"data": ["语" * limit, [], "custom", "", "", "", "提" * limit, "auto"]}
    assert len(json.dumps(payload).encode()) < max_body_bytes(limit)


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
    assert conn.exists("chat:rate:api:203.0.113.10") and conn.ttl("chat:rate:api:203.0.113.10") > 0
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


# -- what the browser may render and fetch ------------------------------------------------------
async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def missing_fn(request: Request) -> JSONResponse:
    raise KeyError(9999)  # what Gradio's get_fn raises for an unknown fn_index


async def real_bug(request: Request) -> JSONResponse:
    raise RuntimeError("a genuine bug must still surface")


async def test_security_headers_and_unknown_endpoints():
    routes = [
        Route("/", ok),
        Route("/gradio_api/queue/join", missing_fn, methods=["POST"]),
        Route("/gradio_api/call/broken", real_bug, methods=["POST"]),
    ]
    # As in app.py: user middleware, inside Starlette's own error handler.
    middleware = [Middleware(SecurityHeaders), Middleware(UnknownEndpoint)]
    app = Starlette(routes=routes, middleware=middleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        page = await http.get("/")
        assert "form-action 'self'" in page.headers["content-security-policy"]
        assert "img-src 'self' data: blob:" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        missing = await http.post("/gradio_api/queue/join")
        assert missing.status_code == 404 and "No such API endpoint" in missing.json()["error"]
        assert (await http.post("/gradio_api/call/broken")).status_code == 500
