from __future__ import annotations

import pytest
import redis

from tests.fake_upstream import FakeUpstream
from tests.servers import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server for the whole run (tests use their own keys or flush it)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the private server: it is ours, so flushing it is safe."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture
def anyio_backend():
    """Async tests use `@pytest.mark.anyio` (anyio ships with gradio) on asyncio."""
    return "asyncio"


@pytest.fixture(scope="module")
def upstream():
    """The fake OpenAI-compatible server (real HTTP), shared by a module's tests; modules
    that need a fresh one per test define their own `upstream`."""
    with FakeUpstream() as server:
        yield server
