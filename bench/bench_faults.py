"""Timings of the fault paths (issue 5), for README: how fast a cancel reaches the provider,
what the rate limiter costs per message, and how fast a refusal comes back.

    python bench/bench_faults.py [--rounds 10]

Launches `python app.py` (tests/app_server.py) against the fake upstream (real HTTP) and a
private redis-server; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis.asyncio as aredis
from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rate_limits import RateLimited, RateLimiter, storage_for
from tests.app_server import AppServer
from tests.fake_upstream import FakeUpstream, slow
from tests.servers import RedisServer


def ms(values: list[float]) -> str:
    values = sorted(v * 1000 for v in values)
    p90 = values[max(0, round(0.9 * len(values)) - 1)]
    return f"median {statistics.median(values):.1f} ms, p90 {p90:.1f} ms (n={len(values)})"


def wait_disconnect(upstream: FakeUpstream, before: int, timeout: float = 10) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(upstream.disconnects) > before:
            return upstream.disconnects[-1].disconnected_at
        time.sleep(0.002)
    raise TimeoutError("the upstream never saw a disconnect")


def cancel_latency(app: AppServer, upstream: FakeUpstream, rounds: int) -> list[float]:
    """job.cancel() (what Stop does) -> the upstream sees its connection close."""
    client = Client(app.url, verbose=False)
    seen = []
    for _ in range(rounds):
        upstream.script(slow("word " * 1000, delay=0.01))
        before = len(upstream.disconnects)
        job = client.submit(message="long", provider="openai", model="gpt-4o", api_name="/chat")
        while not any(len(r) > 20 for r, _ in job.outputs()):
            time.sleep(0.005)
        started = time.monotonic()
        job.cancel()
        seen.append(wait_disconnect(upstream, before) - started)
        time.sleep(0.3)
    return seen


def hangup_latency(app: AppServer, upstream: FakeUpstream, rounds: int) -> list[float]:
    """The browser's event stream closes (tab closed) -> the upstream sees the close."""
    config = httpx.get(app.url + "config", timeout=10).json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "chat")
    seen = []
    for _ in range(rounds):
        upstream.script(slow("word " * 1000, delay=0.01))
        before = len(upstream.disconnects)
        session = uuid.uuid4().hex[:12]
        data = ["long", None, "assistant", "openai", "gpt-4o", "", "", "auto"]
        httpx.post(
            app.url + "gradio_api/queue/join",
            json={"data": data, "fn_index": fn, "session_hash": session},
            timeout=10,
        )
        url = app.url + f"gradio_api/queue/data?session_hash={session}"
        with httpx.stream("GET", url, timeout=30) as events:
            for line in events.iter_lines():
                if line.startswith("data:") and "word word word" in line:
                    break
            started = time.monotonic()
        seen.append(wait_disconnect(upstream, before) - started)
        time.sleep(0.3)
    return seen


async def limiter_cost(url: str, rounds: int) -> tuple[list[float], list[float]]:
    conn = aredis.from_url(url)
    storage = storage_for(conn, "bench")
    limiter = RateLimiter(storage, per_client=rounds * 10, per_ip=rounds * 10, name="allowed")
    allowed = []
    for _ in range(rounds * 10):
        started = time.perf_counter()
        await limiter.hit("b" * 32, "10.0.0.1")
        allowed.append(time.perf_counter() - started)
    refused = []
    tight = RateLimiter(storage, per_client=1, per_ip=0, name="refused")
    await tight.hit("c" * 32, None)
    for _ in range(rounds * 10):
        started = time.perf_counter()
        with contextlib.suppress(RateLimited):
            await tight.hit("c" * 32, None)
        refused.append(time.perf_counter() - started)
    await conn.aclose()
    return allowed, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    redis_server = RedisServer().start()
    results: dict[str, str] = {}
    try:
        allowed, refused = asyncio.run(limiter_cost(redis_server.url, args.rounds))
        results["rate limiter, allowed message (real Redis)"] = ms(allowed)
        results["rate limiter, refused message"] = ms(refused)
        with FakeUpstream() as upstream:
            env = {
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": upstream.base_url,
                "REDIS_URL": redis_server.url,
                "RATE_LIMIT_PER_MINUTE": "0",
            }
            with AppServer(env) as app:
                results["Stop (job.cancel) -> upstream closed"] = ms(
                    cancel_latency(app, upstream, args.rounds)
                )
                results["event stream dropped -> upstream closed"] = ms(
                    hangup_latency(app, upstream, args.rounds)
                )
    finally:
        redis_server.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
