"""Benchmark history.py against the seed's way, on a private real redis-server.

    python bench/bench_history.py

The seed's way (baseline): every image inline as base64 in its message's JSON, one call per
command. Ours: images once under img:<sha256>, one MULTI per turn, an in-process image cache.
Prints a Markdown table (medians). Runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aredis

import history
from tests.servers import RedisServer

TTL = 7 * 86400
ROUNDS = 300
LOAD_ROUNDS = 100
IMAGE_BYTES = 200_000
USER_TEXT = "Please explain what this picture shows, step by step. " * 4  # ~220 chars
ASSISTANT_TEXT = "Here is a careful answer with a list, a table and some code. " * 25  # ~1.5 KB


async def median_ms(action: Callable[[], Awaitable[object]], rounds: int) -> float:
    for _ in range(10):  # warm-up: connections, caches
        await action()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def make_images() -> dict[str, tuple[bytes, str]]:
    blobs = (os.urandom(IMAGE_BYTES) for _ in range(5))  # incompressible, like JPEG
    return {hashlib.sha256(b).hexdigest(): (b, "image/jpeg") for b in blobs}


def conversation(images: dict[str, tuple[bytes, str]], inline: bool) -> list[dict]:
    """20 messages; the first 5 user messages carry one image each."""
    shas = list(images)
    messages = []
    for i in range(10):
        message: dict = {"role": "user", "content": USER_TEXT}
        if i < 5:
            sha = shas[i]
            ref = {
                "sha256": sha,
                "mime": "image/jpeg",
                "width": 800,
                "height": 600,
                "name": "p.jpg",
            }
            if inline:
                ref["data"] = base64.b64encode(images[sha][0]).decode()
            message["images"] = [ref]
        messages += [message, {"role": "assistant", "content": ASSISTANT_TEXT}]
    return messages


class Seed:
    """The seed service's storage, reduced to what it did per call."""

    def __init__(self, client: aredis.Redis) -> None:
        self.r = client

    async def create(self, session: str) -> str:
        cid = history.new_id()
        await self.r.hset(f"seed:meta:{cid}", mapping={"title": "", "updated": time.time()})
        await self.r.sadd(f"seed:session:{session}", cid)
        return cid

    async def append(self, cid: str, session: str, message: dict) -> None:
        await self.r.rpush(f"seed:msgs:{cid}", json.dumps(message))
        await self.r.expire(f"seed:msgs:{cid}", TTL)
        await self.r.hset(f"seed:meta:{cid}", "updated", time.time())
        await self.r.sadd(f"seed:session:{session}", cid)

    async def load(self, cid: str) -> list[dict]:
        return [json.loads(m) for m in await self.r.lrange(f"seed:msgs:{cid}", 0, -1)]


async def used_memory(client: aredis.Redis) -> int:
    return (await client.info("memory"))["used_memory"]


async def bench_append(store: history.HistoryStore, seed: Seed) -> dict[str, tuple[float, float]]:
    browser = history.new_id()
    ours_cid = await store.create_conversation(browser)
    seed_cid = await seed.create(browser)
    text = {"role": "user", "content": USER_TEXT}
    turn = [text, {"role": "assistant", "content": ASSISTANT_TEXT}]
    rows = {
        "append one message (text)": (
            await median_ms(lambda: seed.append(seed_cid, browser, text), ROUNDS),
            await median_ms(
                lambda: store.append_turn(ours_cid, [text], browser_id=browser), ROUNDS
            ),
        ),
    }

    async def seed_turn() -> None:
        for message in turn:
            await seed.append(seed_cid, browser, message)

    rows["append one turn (user + assistant, one call)"] = (
        await median_ms(seed_turn, ROUNDS),
        await median_ms(lambda: store.append_turn(ours_cid, turn, browser_id=browser), ROUNDS),
    )
    images = make_images()
    sha, (data, mime) = next(iter(images.items()))
    ref = {"sha256": sha, "mime": mime, "width": 800, "height": 600, "name": "p.jpg"}
    seed_message = {**text, "images": [{**ref, "data": base64.b64encode(data).decode()}]}
    rows["append one message with a 200 KB image"] = (
        await median_ms(lambda: seed.append(seed_cid, browser, seed_message), ROUNDS // 3),
        await median_ms(
            lambda: store.append_turn(
                ours_cid, [{**text, "images": [ref]}], {sha: (data, mime)}, browser_id=browser
            ),
            ROUNDS // 3,
        ),
    )
    return rows


async def bench_load(store: history.HistoryStore, seed: Seed) -> dict[str, tuple[float, float]]:
    images = make_images()
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    await store.append_turn(cid, conversation(images, inline=False), images, browser_id=browser)
    seed_cid = await seed.create(browser)
    for message in conversation(images, inline=True):
        await seed.append(seed_cid, browser, message)

    async def load() -> None:
        messages = await store.get_messages(cid)
        shas = [r["sha256"] for m in messages for r in m.get("images", [])]
        assert len(await store.get_images(shas)) == 5

    async def load_cold() -> None:
        store._images.clear()
        await load()

    seed_ms = await median_ms(lambda: seed.load(seed_cid), LOAD_ROUNDS)
    return {
        "load 20 messages + 5 images, warm (cache)": (
            seed_ms,
            await median_ms(load, LOAD_ROUNDS),
        ),
        "load 20 messages + 5 images, cold": (seed_ms, await median_ms(load_cold, LOAD_ROUNDS)),
    }


async def memory_mb(url: str, write: Callable[[], Awaitable[None]]) -> float:
    """used_memory delta of write(), which opens and closes its own connections (so their
    buffers are not counted). Twice: the first round pays one-off allocations."""
    raw = aredis.from_url(url)
    for _ in range(2):
        await raw.flushdb()
        before = await used_memory(raw)
        await write()
        await asyncio.sleep(0.1)  # let the server free the closed connections
        delta = await used_memory(raw) - before
    await raw.aclose()
    return delta / 1e6


async def bench_memory(url: str) -> tuple[float, float]:
    """10 conversations sharing the same 5 images."""
    images = make_images()
    browser = history.new_id()

    async def seed_way() -> None:
        client = aredis.from_url(url)
        seed = Seed(client)
        for _ in range(10):
            cid = await seed.create(browser)
            for message in conversation(images, inline=True):
                await seed.append(cid, browser, message)
        await client.aclose()

    async def ours() -> None:
        store = await history.HistoryStore.connect(url)
        for _ in range(10):
            cid = await store.create_conversation(browser)
            await store.append_turn(cid, conversation(images, inline=False), images)
        await store.close()

    return await memory_mb(url, seed_way), await memory_mb(url, ours)


def table(rows: dict[str, tuple[float, float]], memory: tuple[float, float]) -> str:
    targets = {
        "append one turn (user + assistant, one call)": "<= 0.6 ms",
        "append one message (text)": "<= 0.6 ms",
        "load 20 messages + 5 images, warm (cache)": "<= 1 ms",
        "load 20 messages + 5 images, cold": "<= 6 ms",
        "Redis memory, 10 conversations sharing 5 images": "<= 1.5 MB",
    }
    lines = [
        "| measure (median) | seed's way | history.py | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for name, (seed, ours) in rows.items():
        lines.append(
            f"| {name} | {seed:.3f} ms | {ours:.3f} ms | {ours / seed:.2f}x | "
            f"{targets.get(name, '')} |"
        )
    name = "Redis memory, 10 conversations sharing 5 images"
    seed, ours = memory
    lines.append(
        f"| {name} | {seed:.2f} MB | {ours:.2f} MB | {ours / seed:.2f}x | {targets[name]} |"
    )
    return "\n".join(lines)


async def main(url: str) -> str:
    store = await history.HistoryStore.connect(url)
    raw = aredis.from_url(url)
    seed = Seed(raw)
    rows = await bench_append(store, seed)
    rows |= await bench_load(store, seed)
    await raw.aclose()
    await store.close()
    memory = await bench_memory(url)
    return table(rows, memory)


if __name__ == "__main__":
    server = RedisServer().start()
    try:
        started = time.perf_counter()
        out = asyncio.run(main(server.url))
        version = os.popen(f"{server.binary} --version").read().split()[2]
        try:
            import hiredis  # noqa: F401

            parser = "hiredis"
        except ImportError:
            parser = "pure-Python parser (hiredis not installed)"
        print(f"redis-server {version}, loopback, redis-py {aredis.__name__} + {parser}\n")
        print(out)
        print(f"\n({time.perf_counter() - started:.1f} s)")
    finally:
        server.close()
