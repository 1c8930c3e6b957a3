"""Benchmark HistoryStore.search_conversations on a private redis-server and embedded.

    python bench/bench_search.py                       # 1,000 conversations x 50 messages
    python bench/bench_search.py --redis-url redis://127.0.0.1:6390/0   # a Redis you give
    python bench/bench_search.py --conversations 200   # a quicker run

One browser gets N conversations of M messages (mixed English and Chinese, 200-600
characters each), then each query is timed cold (the search cache empty, as after a start
or on another replica) and warm (cached; each conversation's score checked against Redis).
Also: a search after one conversation changed, the loop's longest stall during a cold
search, and the cache's size. Prints Markdown tables (milliseconds). The given Redis's
database is flushed: never point it at one that holds data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aredis

import history
from tests.servers import RedisServer

COLD_ROUNDS = 7
WARM_ROUNDS = 60
SEED = 15

ENGLISH = [
    "Could you explain how the Redis sorted set keeps its members ordered by score?",
    "Here is a short Python function that reads the file line by line and counts words.",
    "The train from Shanghai leaves at nine, so plan to be at the station by half past eight.",
    "I would start with a small prototype, measure it, and only then optimise the slow part.",
    "Remember to water the tomatoes in the evening when the soil has cooled down a little.",
    "The error means the connection was closed by the server before the reply arrived.",
    "A good cover letter is short, names the role, and says why you fit it in two lines.",
    "Try the recipe with brown sugar instead of white; it gives the sauce a deeper colour.",
    "Use a virtual environment so the project's packages do not clash with the system's.",
    "The museum is closed on Mondays, but the park next to it is open all week.",
    "Sorting a list of dictionaries by a key is one line with sorted and a lambda.",
    "If the image is too large, resize it to 1024 pixels on the long side before upload.",
    "Thanks, that worked! One more question about the data pipeline, if you have a minute.",
    "The meeting moved to Thursday afternoon; please update the shared calendar.",
    "Gradient descent takes small steps downhill; the learning rate sets their size.",
]
CHINESE = [
    "请帮我把这段话翻译成英文，语气正式一点。",
    "这个函数的时间复杂度是多少？有没有更快的写法？",
    "周末想去杭州玩两天，有什么推荐的路线吗？",
    "我的数据表有十万行，用 pandas 读进来以后内存占用很高。",
    "先把问题拆成几个小步骤，每一步都写一个测试。",
    "这道菜需要先焯水，再用小火慢炖四十分钟。",
    "简历里最好写清楚项目的结果，而不只是做了什么。",
    "服务器返回了五百错误，日志里显示数据库连接超时。",
    "孩子的数学作业里有一道应用题，我也不太会讲。",
    "机器学习模型在训练集上很好，在测试集上却很差，这是过拟合。",
    "请用三句话总结这篇文章的主要观点。",
    "上海这几天一直下雨，出门记得带伞。",
    "用 Python 处理数据的时候，向量化通常比循环快很多。",
    "这个报错的意思是找不到模块，检查一下虚拟环境有没有激活。",
    "明天早上八点开会，讨论下个季度的计划。",
]
RARE = {  # a few conversations hold these: queries that scan everything, then find some
    "kubernetes": "We finally moved the service to Kubernetes and the rollout went smoothly.",
    "北京天气": "请问明天北京天气怎么样？需要穿外套吗？",
}
TITLES = ["Python help", "旅行计划", "Recipe ideas", "工作总结", "Data questions", "", "学习笔记"]
QUERIES = {
    "hit, common word (stops at 50)": "python",
    "hit, rare word (scans all)": "kubernetes",
    "miss": "xylophone",
    "Chinese, rare": "北京天气",
    "two terms": "redis 数据",
    "title only": "travel",
}


def message_text(rng: random.Random) -> str:
    """200-600 characters: English, Chinese or both, as users and answers mix them."""
    target = rng.randint(200, 600)
    pools = rng.choice([(ENGLISH,), (CHINESE,), (ENGLISH, CHINESE)])
    parts: list[str] = []
    while sum(map(len, parts)) < target:
        parts.append(rng.choice(rng.choice(pools)))
    return " ".join(parts)[:target]


def conversation(rng: random.Random, index: int, messages: int) -> list[dict]:
    roles = ("user", "assistant")
    out = [{"role": roles[i % 2], "content": message_text(rng)} for i in range(messages)]
    for n, text in enumerate(RARE.values()):
        if index % 97 == 13 + n:  # ~1% of conversations each
            out[rng.randrange(messages)]["content"] += " " + text
    return out


async def fill(store: history.HistoryStore, count: int, messages: int) -> str:
    rng = random.Random(SEED)
    browser = history.new_id()
    for i in range(count):
        title = "Travel plans" if i == count // 2 else rng.choice(TITLES)
        cid = await store.create_conversation(browser, title=title)
        await store.append_turn(cid, conversation(rng, i, messages), browser_id=browser)
    return browser


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return (time.perf_counter() - start) * 1000


async def cpu_ms(action: Callable[[], Awaitable[object]]) -> float:
    """This process's CPU for one run: less moved by other work on the machine than the
    wall time (the Redis server's own CPU is not in it)."""
    start = time.process_time()
    await action()
    return (time.process_time() - start) * 1000


def cold(store: history.HistoryStore) -> None:
    store._search = None  # the cache a new process (or another replica) starts with


async def longest_stall(action: Callable[[], Awaitable[object]]) -> float:
    """The event loop's longest late wake-up (ms) while `action` runs: what other users'
    streams would wait."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, (time.perf_counter() - before) * 1000 - 1)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await action()
    done = True
    await task
    return worst


async def bench(store: history.HistoryStore, count: int, messages: int) -> list[str]:
    started = time.perf_counter()
    browser = await fill(store, count, messages)
    filled = time.perf_counter() - started
    rows = []
    cold(store)
    first = await timed(lambda: store.search_conversations(browser, QUERIES["miss"]))
    for name, query in QUERIES.items():

        async def search(query: str = query) -> list:
            return await store.search_conversations(browser, query)

        cold_samples = []
        for _ in range(COLD_ROUNDS):
            cold(store)
            cold_samples.append(await timed(search))
        for _ in range(3):
            await search()
        warm_samples = [await timed(search) for _ in range(WARM_ROUNDS)]
        cpu = statistics.median([await cpu_ms(search) for _ in range(WARM_ROUNDS // 3)])
        hits = len(await search())
        (cm, cp), (wm, wp) = stats(cold_samples), stats(warm_samples)
        rows.append(
            f"| {name} `{query}` | {hits} | {cm:.0f} | {cp:.0f} | {wm:.1f} | {wp:.1f} | {cpu:.0f} |"
        )

    cid = (await store.list_conversations(browser))[-1]["id"]
    changed = []
    for i in range(20):
        await store.append_turn(cid, [{"role": "user", "content": f"one more line {i}"}])
        changed.append(await timed(lambda: store.search_conversations(browser, "xylophone")))
    cold(store)
    stall = await longest_stall(lambda: store.search_conversations(browser, "xylophone"))
    assert store._search is not None
    size = store._search.cache.size
    cm, cp = stats(changed)
    return [
        f"filled {count} x {messages} messages in {filled:.1f} s; "
        f"first search after start (cold, miss): {first:.0f} ms",
        "",
        "| query | hits | cold median | cold p95 | warm median | warm p95 | warm CPU |",
        "|---|---|---|---|---|---|---|",
        *rows,
        f"| miss, after one conversation changed | 0 | | | {cm:.1f} | {cp:.1f} | |",
        "",
        f"longest event-loop stall during a cold miss: {stall:.0f} ms; "
        f"cache: {size / 1e6:.1f} MB for {count} conversations",
    ]


async def main(url: str | None, count: int, messages: int) -> list[str]:
    if url:
        raw = aredis.from_url(url)
        await raw.flushdb()
        await raw.aclose()
    store = await history.HistoryStore.connect(url, max_messages=max(messages, 200))
    try:
        return await bench(store, count, messages)
    finally:
        await store.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis to fill (its database is FLUSHED)")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded store")
    return parser.parse_args()


def machine() -> str:
    with open("/proc/cpuinfo") as info:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in info if "model name" in line),
            "unknown CPU",
        )
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({cpu}), load average {load:.2f}, Python {sys.version[:6]}"


if __name__ == "__main__":
    args = parse_args()
    started = time.perf_counter()
    server = None if args.redis_url else RedisServer().start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        try:
            import hiredis  # noqa: F401

            parser = "hiredis"
        except ImportError:
            parser = "pure-Python parser (hiredis not installed)"
        print(f"{machine()}; redis-py + {parser}\n")
        print(f"## redis-server on loopback ({history.display_url(url)})\n")
        print("\n".join(asyncio.run(main(url, args.conversations, args.messages))))
        if not args.no_embedded:
            print("\n## embedded store (fakeredis)\n")
            print("\n".join(asyncio.run(main(None, args.conversations, args.messages))))
        print(f"\n({time.perf_counter() - started:.1f} s)")
    finally:
        if server is not None:
            server.close()
