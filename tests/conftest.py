"""Shared fixtures, the app's test environment (`app_env`) and the test markers.

Markers (tests/README.md): every test gets exactly one of `unit`, `e2e`, `browser`, from the
fixtures it uses (see `pytest_collection_modifyitems`) or an explicit `@pytest.mark.<name>`.
A `unit` test that starts a process fails (`_refuse_processes_in_unit_tests`), so the
quick loop `python -m pytest -q -m unit` stays quick and the automatic rule stays honest.
"""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING

import pytest
import redis

from tests.fake_upstream import FakeUpstream
from tests.servers import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterable

TEST_KEY = "sk-test-openai"  # the fake upstream accepts any key


def app_env(
    upstream: FakeUpstream | None = None,
    redis_url: str | None = None,
    **overrides: str | None,
) -> dict[str, str]:
    """The environment of an app (`AppServer(app_env(...))`) or of a ChatService/Providers
    built in the test (`load_settings(env)`, `Providers(env)`).

    upstream: the `openai` provider talks to it (a test key, its base URL) and is the default.
    redis_url: history in that Redis (a database of the private server); None: embedded store.
    overrides: any other variable, e.g. `RATE_LIMIT_PER_MINUTE="1000"`; None drops a default
    (`DEFAULT_PROVIDER=None`). AUTO_TITLE is false unless overridden. Rate limits are never
    set here: RATE_LIMIT_PER_MINUTE also sets the per-IP and global defaults, so a test that
    needs them out of the way says so.
    """
    # Titles by the model are off: the fake upstream would answer the title request too
    # (tests/test_auto_title.py and the browser test of titles turn them on).
    env: dict[str, str | None] = {"AUTO_TITLE": "false"}
    if upstream is not None:
        env |= {
            "OPENAI_API_KEY": TEST_KEY,
            "OPENAI_BASE_URL": upstream.base_url,
            "DEFAULT_PROVIDER": "openai",
        }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env |= overrides
    return {name: value for name, value in env.items() if value is not None}


# ---- markers -------------------------------------------------------------------------------

MARKERS = ("unit", "e2e", "browser")
BROWSER_FIXTURES = frozenset({"browser", "new_context"})
# Fixtures that start servers: the private redis-server, a fake upstream, a launched app.
E2E_FIXTURES = frozenset({"redis_server", "redis_url", "upstream", "history_redis"})


def _starts_servers(fixtures: Iterable[str]) -> bool:
    return any(
        name in E2E_FIXTURES or name == "app" or name.endswith("_app") or "upstream" in name
        for name in fixtures
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One marker per test: an explicit one wins; else browser fixtures -> browser, server
    fixtures (closure, so indirect use counts) -> e2e, the rest -> unit."""
    for item in items:
        if any(item.get_closest_marker(name) for name in MARKERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
        elif _starts_servers(fixtures):
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.unit)


_unit_test: str | None = None  # node id of the unit test being set up or run, if any
_started: list[str] = []  # what it started


def _watch_processes(event: str, args: tuple) -> None:
    if _unit_test is not None and event in ("subprocess.Popen", "os.system", "os.posix_spawn"):
        command = args[1] if event == "subprocess.Popen" else args[0]
        _started.append(f"{event} {str(command)[:120]}")


sys.addaudithook(_watch_processes)  # audit hooks cannot be removed: a flag switches it
# platform.uname() (openai's client headers) runs `uname -p` once per process: not the tests'.
platform.processor()


def _refuse_processes_in_unit_tests(item: pytest.Item):
    """Around a unit test's setup and call: fail it if it started a process (the message
    names the command only, never the environment it was given)."""
    global _unit_test
    _unit_test = item.nodeid if item.get_closest_marker("unit") else None
    _started.clear()
    try:
        return (yield)
    finally:
        _unit_test = None
        if _started:
            started = ", ".join(_started[:3])
            pytest.fail(
                f"{item.nodeid} is marked unit but started a process ({started}): "
                "mark it @pytest.mark.e2e (or browser)",
                pytrace=False,
            )


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_refuse_processes_in_unit_tests)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_refuse_processes_in_unit_tests)


# ---- servers -------------------------------------------------------------------------------


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
