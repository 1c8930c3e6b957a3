"""The Redis clients of the history store, and what their failures mean for a user.

`connect_clients` opens a reading and a writing client (or one embedded fakeredis), `Guard`
turns redis-py errors into `HistoryUnavailable` with a message fit to show, and
`app_secret_from_redis` is the one synchronous call (when the page is built, before the
event loop serves).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("history")

EMBEDDED_DISPLAY = "in-memory (embedded)"

# What a failed call means for the user, per kind of call: (unreachable, timed out).
READ = ("try again in a moment.", "try again in a moment.")
MESSAGE = (
    "your message was not saved. Try again in a moment.",
    "your message may not have been saved. Try again in a moment.",
)
CHANGE = ("nothing was changed. Try again in a moment.", "try again in a moment.")


class HistoryUnavailable(RuntimeError):
    """Redis cannot serve the request; str() is a short message fit to show a user."""


class Guard:
    """Turns redis-py errors into HistoryUnavailable with a message a user can read."""

    def __init__(self, hints: tuple[str, str]) -> None:
        self.hints = hints

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> Literal[False]:
        if err is None or not isinstance(err, RedisError | OSError):
            return False
        unreachable, timed_out = self.hints
        if isinstance(err, RedisTimeoutError):
            # A timed-out write may still have run, so the hint does not claim it did not.
            message = f"History store (Redis) did not answer in time; {timed_out}"
        elif isinstance(err, RedisConnectionError | OSError):
            message = f"History store (Redis) is unreachable; {unreachable}"
        else:
            message = f"History store (Redis) refused the request; {unreachable}"
        log.warning("history store error: %s: %s", type(err).__name__, err)
        raise HistoryUnavailable(message) from err


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def display_url(url: str) -> str:
    """The URL without credentials or query (which may carry a password), for logs and the UI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _unreachable(shown: str, err: BaseException) -> HistoryUnavailable:
    return HistoryUnavailable(
        f"Cannot reach Redis at {shown}: {err}. Check REDIS_URL or start Redis."
    )


def make_client(url: str, *, retry_timeouts: bool) -> aredis.Redis:
    """A client that reconnects by itself: a dead pooled connection is retried once.

    Reads also retry on a timeout (the modern form of `retry_on_timeout`). Writes do not: a MULTI
    whose EXEC timed out may have run, and running it again would store the turn twice.
    """
    errors: tuple[type[RedisError], ...] = (RedisConnectionError,)
    if retry_timeouts:
        errors += (RedisTimeoutError,)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=errors)
    # Blocking: redis-py's default pool raises "Too many connections" past 100 commands in
    # flight, which 200 users starting at once reach (bench/bench_load.py). This one is
    # larger, and when even it is exhausted (an overloaded process) a command waits for a
    # free connection rather than failing the user's turn.
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=256,
        timeout=20,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,  # PING a connection idle this long, so a stale one is noticed
        retry=retry,
        client_name="chat-history",
    )
    return aredis.Redis.from_pool(pool)


async def connect_clients(url: str | None) -> tuple[Any, Any, str]:
    """(reader, writer, url for display): url None/"" -> one embedded fakeredis; else two
    clients of a Redis that must answer PING now (HistoryUnavailable if it does not)."""
    if not url:
        import fakeredis  # only the embedded mode needs it

        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return client, client, EMBEDDED_DISPLAY
    shown = display_url(url)
    try:
        reader = make_client(url, retry_timeouts=True)
        writer = make_client(url, retry_timeouts=False)
    except ValueError as err:
        raise HistoryUnavailable(f"Invalid REDIS_URL {shown}: {err}") from err
    try:
        await reader.ping()
    except (RedisError, OSError) as err:
        await close_clients(reader, writer)
        raise _unreachable(shown, err) from err
    # Drop the PING's connection: if this ran in a throwaway event loop (asyncio.run at
    # import), a pooled connection bound to that loop would break the app's loop later.
    await reader.connection_pool.disconnect()
    return reader, writer, shown


async def close_clients(*clients: Any) -> None:
    for client in {id(c): c for c in clients}.values():
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


def app_secret_from_redis(url: str, prefix: str = "chat:") -> str:
    """Sync twin of HistoryStore.get_or_create_app_secret, for import time (before the event
    loop runs)."""
    shown = display_url(url)
    key = f"{prefix}app_secret"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.set(key, secrets.token_urlsafe(32), nx=True)
            pipe.get(key)
            return as_text(pipe.execute()[1])
        finally:
            client.close()
    except (RedisError, OSError, ValueError) as err:
        raise _unreachable(shown, err) from err
