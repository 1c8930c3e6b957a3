"""Load benchmark: this app against a plain `gr.ChatInterface`, same fake provider, same run.

    python bench/bench_load.py            # about 5 minutes on 2 cores; prints Markdown tables
    python bench/bench_load.py --quick    # fewer samples, shorter caps (a smoke run)

One command starts everything on loopback: the fake OpenAI-compatible upstream
(`tests/fake_upstream.py`, in its own process so its threads do not share the load
generator's GIL), a private redis-server, `python app.py`, and `python bench/baseline_app.py`
(Gradio defaults). Each app is measured alone, with the same load:

- TTFT: time to the first token through the app, against calling the upstream directly with
  the openai SDK (10-token answers streamed like the long ones, sequential samples, median).
- 1 / 40 / 200 users starting at once, each streaming a ~2 s answer (100 tokens, 20 ms apart):
  the time until the last one has its whole answer on screen (its last token; the
  bookkeeping after it, such as the sidebar list, is not part of the answer), errors, and
  the app's CPU per 1000 tokens (utime + stime of the app process from /proc, divided by
  the tokens the upstream sent).
- Long conversation: one stream in a chat with 200 earlier messages against an empty one:
  server CPU (marginal, idle CPU subtracted) and bytes per streamed update, browser path.
- Event loop: latency of GET /health while four users send a 12 MP photo each (this app).
- Start-up (process start to `/gradio_api/info` answering) and RSS idle / with 100 sessions
  that each have a 20-message conversation open.

The load is raw HTTP against Gradio's queue protocol (POST /gradio_api/queue/join, then the
SSE stream GET /gradio_api/queue/data), with one httpx.AsyncClient: 200 gradio_client
Clients in one process cost more CPU than the apps being measured. Two paths are driven:
"api" = the public /chat endpoint, "ui" = what a browser does (a small frontend emulation:
it follows the event chain of the page config: submit -> then -> then, keeps the component
values and applies Gradio's streaming diffs; a user's page is loaded before the load starts).
Every simulated user has an address of its own (X-Forwarded-For). Loads against the baseline
that cannot finish because it serialises users are cut off at a cap and shown as "> cap".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.servers import free_port  # noqa: E402

TOKENS = 100  # per streamed answer
TOKEN_DELAY = 0.02  # s between tokens: 100 tokens = a ~2 s answer (50 tokens/s, a fast model)
WORDS = [f"w{i:03d} " for i in range(TOKENS)]  # 5 characters each: ~1 real token
ANSWER = "".join(WORDS)
QUICK = "quick"  # a message starting with this gets 5 tokens at once (warm-up, memory)
PROBE = "probe"  # ... 10 tokens 20 ms apart: a short answer that streams like the long one
SHORT_TOKENS = {QUICK: (5, 0.0), PROBE: (10, TOKEN_DELAY)}
MODEL = "bench-model"
TIMEOUT = httpx.Timeout(120, connect=30)


# --------------------------------------------------------------------------------------
# The fake provider, run in its own process: `bench_load.py --serve-upstream PORT`


def serve_upstream(port: int) -> None:
    """FakeUpstream answering every chat request with the bench's stream; prints stats on
    each line read from stdin ("stats")."""
    from tests import fake_upstream as fu

    # 200 connections arrive within milliseconds: the stdlib's backlog of 5 would drop SYNs
    # (a 1 s client retry each), which would measure the kernel, not the apps.
    fu._Server.request_queue_size = 1024
    # (TCP_NODELAY is set by tests/fake_upstream.py itself: without it each first chunk
    # would wait ~40 ms for the client's delayed ACK, the direct TTFT included.)
    # A load cut off at its cap hangs up on open streams: that is expected, not worth a trace.
    fu._Server.handle_error = lambda self, request, address: None
    stats = {"tokens": 0, "open": 0, "streams": 0}
    lock = threading.Lock()

    def count(key: str, delta: int) -> None:
        with lock:
            stats[key] += delta

    def answer(ex: fu.Exchange) -> None:
        count_, delay = SHORT_TOKENS.get(ex.last_user_text()[:5], (TOKENS, TOKEN_DELAY))
        words = WORDS[:count_]
        ex.start_stream()
        count("open", 1)
        count("streams", 1)
        try:
            for word in words:
                ex.send_delta({"role": "assistant", "content": word})
                count("tokens", 1)
                if delay:
                    ex.pause(delay)
            ex.send_delta({}, "stop")
            if ex.include_usage:
                ex.send_usage("".join(words))
            ex.end_stream()
        finally:
            count("open", -1)

    class BenchUpstream(fu.FakeUpstream):
        def _record(
            self, body: dict, headers: dict[str, str], path: str, peer: tuple = ()
        ) -> tuple[int, Any]:
            return 0, answer  # no request log: thousands of requests, nothing to inspect

    with BenchUpstream(port=port):
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                with lock:
                    print(json.dumps(stats), flush=True)


class Upstream:
    """The upstream process, seen from the bench."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the fake upstream did not start")

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def tokens(self) -> int:
        return self.stats()["tokens"]

    async def wait_idle(self, timeout: float = 30) -> None:
        """Until no stream has been open for a moment (a cut-off baseline drains its queue)."""
        deadline, quiet_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.stats()["open"] == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.0:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.1)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------------------
# Processes: start, readiness, CPU, memory


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class App:
    """`python <script>` on a free port with a clean environment; times its start-up."""

    def __init__(self, name: str, script: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keep = {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR"}
        self.env = {
            **{k: v for k, v in os.environ.items() if k in keep},
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="bench-gradio-"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            **env,
        }
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tempfile.mkdtemp(prefix="bench-cwd-"),  # no stray .env
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.startup_s = self._wait_ready(started)

    def _wait_ready(self, started: float, timeout: float = 90) -> float:
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/gradio_api/info", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------
# Gradio's queue protocol and a small frontend emulation


def apply_edits(value: Any, edits: list) -> Any:
    """Apply one of Gradio's streaming diffs (gradio.utils.diff) in place."""
    for action, path, new in edits:
        if not path:
            value = new if action == "replace" else value + new
            continue
        target = value
        for key in path[:-1]:
            target = target[key]
        last = path[-1]
        if action == "replace":
            target[last] = new
        elif action == "append":
            target[last] += new
        elif action == "add" and isinstance(target, list):
            target.insert(last, new)
        elif action == "add":
            target[last] = new
        elif action == "delete":
            del target[last]
    return value


@dataclass
class Dep:
    index: int
    inputs: list[int]
    outputs: list[int]
    queue: bool
    backend: bool  # False: a js-only step, nothing for the server to run
    js: str | None  # a JavaScript-only step's code
    api_name: str | None
    after: int | None
    only_success: bool
    only_failure: bool
    targets: list


class Page:
    """An app's /config: its components and events."""

    def __init__(self, url: str) -> None:
        config = httpx.get(f"{url}/config", timeout=30).json()
        self.types = {c["id"]: c.get("type") for c in config["components"]}
        self.initial: dict[int, Any] = {}
        for c in config["components"]:
            props = c.get("props", {})
            self.initial[c["id"]] = props.get(
                "default_value" if c.get("type") == "browserstate" else "value"
            )
        self.elem_ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
        self.deps = [
            Dep(
                index=i,
                inputs=d["inputs"],
                outputs=d["outputs"],
                queue=d.get("queue") is not False,
                # js=True steps run in the browser (Gradio transpiles them), not on the server
                backend=bool(d.get("backend_fn", True)) and not d.get("js_implementation"),
                js=None if d.get("backend_fn", True) else d.get("js"),
                api_name=d.get("api_name"),
                after=d.get("trigger_after"),
                only_success=bool(d.get("trigger_only_on_success")),
                only_failure=bool(d.get("trigger_only_on_failure")),
                targets=d.get("targets") or [],
            )
            for i, d in enumerate(config["dependencies"])
        ]

    def dep(self, api_name: str) -> Dep:
        return next(d for d in self.deps if d.api_name == api_name)

    def triggered_by(self, target: int, event: str) -> list[Dep]:
        return [d for d in self.deps if [target, event] in d.targets]

    def followers(self, dep: Dep, success: bool) -> list[Dep]:
        return [
            d
            for d in self.deps
            if d.after == dep.index
            and not (d.only_success and not success)
            and not (d.only_failure and success)
        ]


@dataclass
class Run:
    """One user's turn as the client saw it."""

    start: float
    first_token: float | None = None
    # When the whole answer was on screen: the last token shown, or, for an answer whose
    # text the bench does not know in advance, the end of the event.
    answer_done: float | None = None
    expect: str | None = None  # the whole answer, when known
    updates: int = 0
    diff_bytes: int = 0  # SSE bytes of the updates after each event's first (full) one
    text: str = ""
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def wall(self) -> float | None:
        return None if self.answer_done is None else self.answer_done - self.start


Extract = Callable[[list], str]  # an event's outputs -> the answer text shown so far


def displayed(before: list | None, outputs: list) -> list:
    """The values a browser shows after an event's outputs: a property update (gr.skip() or
    gr.Button(interactive=...)) keeps the value shown before unless it carries one."""
    before = before or [None] * len(outputs)
    shown = []
    for old, new in zip(before, outputs, strict=False):
        if isinstance(new, dict) and new.get("__type__") == "update":
            shown.append(new.get("value", old))
        else:
            shown.append(new)
    return shown


def api_text(outputs: list) -> str:
    return outputs[0] if outputs and isinstance(outputs[0], str) else ""


def chatbot_text(outputs: list) -> str:
    """The answer of the last turn in a Chatbot value (either app's), "" while there is none.
    Messages with a metadata title (thinking, receipts, usage) are not the answer."""
    for value in outputs:
        if not isinstance(value, list) or not value or not isinstance(value[-1], dict):
            continue
        for message in reversed(value):
            if message.get("role") != "assistant":
                return ""
            if (message.get("metadata") or {}).get("title"):
                continue
            content = message.get("content")
            parts = content if isinstance(content, list) else [content]
            text = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
            return "" if text.strip() in ("", "…") else text
    return ""


_addresses = itertools.count(1)


def next_address() -> str:
    n = next(_addresses)
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


class Session:
    """One browser tab or API client: a session hash, component values, the event chain."""

    def __init__(self, http: httpx.AsyncClient, url: str, page: Page) -> None:
        self.http, self.url, self.page = http, url, page
        self.hash = uuid.uuid4().hex[:11]
        # Each simulated user has an address of its own, as real users do: the app trusts
        # X-Forwarded-For from 127.0.0.1 (uvicorn's default), so its per-IP and per-client
        # rate limits work as in production instead of seeing one client sending everything.
        self.headers = {"X-Forwarded-For": next_address()}
        self.values = dict(page.initial)

    def _data(self, dep: Dep) -> list:
        return [None if self.page.types[i] == "state" else self.values.get(i) for i in dep.inputs]

    def _store(self, dep: Dep, outputs: list) -> None:
        before = [self.values.get(cid) for cid in dep.outputs]
        for cid, value in zip(dep.outputs, displayed(before, outputs), strict=False):
            if self.page.types.get(cid) != "state":
                self.values[cid] = value

    async def trigger(
        self, target: int, event: str, run: Run, extract: Extract = chatbot_text
    ) -> Run:
        """Do what the browser does when `event` fires on component `target`."""
        pending = self.page.triggered_by(target, event)
        while pending:
            dep = pending.pop(0)
            if dep.js and len(dep.inputs) == 1 and dep.outputs[1:] == dep.inputs:
                self._move(dep)
            ok = not dep.backend or await self.call(dep, run, extract, trigger=target)
            pending += self.page.followers(dep, ok)
        return run

    def _move(self, dep: Dep) -> None:
        """This app's one JavaScript-only step, `(message) => [message, empty]`: the message
        moves from the input box into a hidden one, which the stream reads."""
        (source,) = dep.inputs
        self.values[dep.outputs[0]] = self.values.get(source)
        self.values[source] = {"text": "", "files": []}

    async def open_page(self) -> None:
        """What a browser does when the page loads: the load events and what they chain."""
        pending = [d for d in self.page.deps if any(t and t[1] == "load" for t in d.targets)]
        run = Run(start=time.monotonic())
        while pending:
            dep = pending.pop(0)
            ok = not dep.backend or await self.call(dep, run, chatbot_text)
            pending += self.page.followers(dep, ok)
        if run.error:
            raise RuntimeError(f"page load: {run.error}")

    async def call(
        self, dep: Dep, run: Run, extract: Extract = api_text, data: list | None = None, **kw: Any
    ) -> bool:
        data = self._data(dep) if data is None else data
        if not dep.queue:
            return await self._direct(dep, data, run, **kw)
        return await self._queued(dep, data, run, extract, **kw)

    async def _direct(self, dep: Dep, data: list, run: Run, trigger: int | None = None) -> bool:
        body = {"data": data, "fn_index": dep.index, "session_hash": self.hash}
        body |= {"event_data": None, "trigger_id": trigger}
        url = f"{self.url}/gradio_api/run/predict"
        response = await self.http.post(url, json=body, headers=self.headers)
        if response.status_code != 200:
            run.error = f"run/predict {response.status_code}: {response.text[:200]}"
            return False
        self._store(dep, response.json()["data"])
        return True

    async def _queued(
        self, dep: Dep, data: list, run: Run, extract: Extract, trigger: int | None = None
    ) -> bool:
        body = {"data": data, "fn_index": dep.index, "session_hash": self.hash}
        body |= {"event_data": None, "trigger_id": trigger}
        url = f"{self.url}/gradio_api/queue/join"
        joined = await self.http.post(url, json=body, headers=self.headers)
        if joined.status_code != 200:
            run.error = f"queue/join {joined.status_code}: {joined.text[:200]}"
            return False
        stream = f"{self.url}/gradio_api/queue/data"
        outputs: list | None = None  # the raw outputs, which Gradio's diffs apply to
        shown: list = []  # what the browser shows: an update leaves a value as it was
        params = {"session_hash": self.hash}
        async with self.http.stream("GET", stream, params=params, headers=self.headers) as sse:
            async for line in sse.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                kind = message.get("msg")
                if kind == "process_generating":
                    run.updates += 1
                    data = message["output"]["data"]
                    if outputs is None:
                        outputs = data
                    else:
                        run.diff_bytes += len(line)
                        outputs = [apply_edits(o, e) for o, e in zip(outputs, data, strict=False)]
                    shown = displayed(shown, outputs)
                    self._seen(run, extract(shown))
                elif kind == "process_completed":
                    return self._completed(dep, run, message, extract, shown)
                elif kind in ("unexpected_error", "close_stream"):
                    run.error = run.error or f"{kind}: {message.get('message')}"
                    return False
        run.error = run.error or "the event stream ended without a result"
        return False

    def _seen(self, run: Run, text: str) -> None:
        if text and run.first_token is None:
            run.first_token = time.monotonic()
        if text:
            run.text = text
            if run.expect and run.answer_done is None and text.strip() == run.expect:
                run.answer_done = time.monotonic()

    def _completed(
        self, dep: Dep, run: Run, message: dict, extract: Extract, streamed: list | None
    ) -> bool:
        output = message.get("output") or {}
        if not message.get("success"):
            run.error = str(output.get("error") or output)[:300]
            return False
        final = displayed(streamed, output.get("data") or [])
        text = extract(final)
        if text:
            self._seen(run, text)
            run.answer_done = run.answer_done or time.monotonic()
        self._store(dep, final)
        return True


# --------------------------------------------------------------------------------------
# The two apps as the load sees them


class Target:
    """How to send one message to an app, through its API or its page."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.page = Page(app.url)
        self.ours = self.app.name == "this app"
        self.api = self.page.dep("chat" if self.ours else "predict")
        self.textbox = self._textbox()

    def _textbox(self) -> int:
        if self.ours:
            return self.page.elem_ids["chat-input"]
        first = self.page.dep("_clear_and_save_textbox")
        return first.targets[0][0]

    def session(self, http: httpx.AsyncClient) -> Session:
        return Session(http, self.app.url, self.page)

    async def send(self, session: Session, message: str, path: str) -> Run:
        short = message.startswith((QUICK, PROBE))
        run = Run(start=time.monotonic(), expect=None if short else ANSWER.strip())
        try:
            if path == "api":
                data = [message, *session._data(self.api)[1:]] if self.ours else [message, None]
                ok = await session.call(self.api, run, api_text, data=data)
                if ok and run.answer_done is None:
                    run.error = run.error or "no answer"
            else:
                session.values[self.textbox] = (
                    {"text": message, "files": []} if self.ours else message
                )
                await session.trigger(self.textbox, "submit", run)
                if run.answer_done is None:
                    run.error = run.error or "no answer"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        return run


def new_http() -> httpx.AsyncClient:
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes
    # them from its side (reusing one then fails with a ReadError, a client artifact).
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500, keepalive_expiry=2.0)
    return httpx.AsyncClient(timeout=TIMEOUT, limits=limits)


# --------------------------------------------------------------------------------------
# Measurements


@dataclass
class Load:
    users: int
    wall: float | None  # s until every user had the whole answer; None = cut off
    done: int
    errors: int
    cpu_per_1k: float | None
    first_error: str | None = None
    ttft_median: float | None = None
    client_cpu: float = 0.0  # the load generator's own CPU, to show it was not the bottleneck


@dataclass
class Results:
    name: str
    startup_s: float = 0.0
    rss_idle: float = 0.0
    rss_loaded: float = 0.0
    ttft: dict[str, float] = field(default_factory=dict)
    loads: dict[tuple[str, int], Load] = field(default_factory=dict)
    long_chat: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    idle_cpu: float = 0.0  # CPU s/s with nothing to do
    probe_ms: tuple[float, float] | None = None  # /health latency: idle median, max with photos


async def direct_ttft(base_url: str, samples: int) -> float:
    """Median time to the first token calling the upstream with the openai SDK."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    times = []
    for i in range(samples + 2):
        user = {"role": "user", "content": f"{PROBE} direct {i}"}
        started = time.monotonic()
        first = None
        stream = await client.chat.completions.create(
            model=MODEL, messages=[*messages, user], stream=True
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - started
        if i >= 2:  # the first two warm the connection, like the apps' warm clients
            times.append(first)
    await client.close()
    return statistics.median(times)


async def app_ttft(target: Target, path: str, samples: int) -> float:
    async with new_http() as http:
        times = []
        for i in range(samples + 2):
            session = target.session(http)
            if path == "ui":
                await session.open_page()
            run = await target.send(session, f"{PROBE} ttft {i}", path)
            if run.error or run.ttft is None:
                raise RuntimeError(f"{target.app.name} {path}: {run.error}")
            if i >= 2:
                times.append(run.ttft)
    return statistics.median(times)


async def load(target: Target, upstream: Upstream, path: str, users: int, cap: float) -> Load:
    """`users` start at once, each streaming the 2 s answer; cut off after `cap` seconds."""
    async with new_http() as http:
        sessions = [target.session(http) for _ in range(users)]
        if path == "ui":  # the users have the page open: its load events ran before
            await asyncio.gather(*(s.open_page() for s in sessions))
        cpu0, tokens0, client0 = target.app.cpu(), upstream.tokens(), time.process_time()
        tasks = [
            asyncio.create_task(target.send(s, f"user {i} says hello", path))
            for i, s in enumerate(sessions)
        ]
        finished, pending = await asyncio.wait(tasks, timeout=cap)
        cpu1, tokens1 = target.app.cpu(), upstream.tokens()
        client_cpu = time.process_time() - client0
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    await upstream.wait_idle()
    runs = [t.result() for t in finished]
    good = [r for r in runs if not r.error and r.text.strip() == ANSWER.strip()]
    bad = [r for r in runs if r not in good]
    tokens = tokens1 - tokens0
    return Load(
        users=users,
        wall=None if pending or not good else max(r.wall for r in good),
        done=len(good),
        errors=len(bad),
        cpu_per_1k=(cpu1 - cpu0) / tokens * 1000 if tokens else None,
        first_error=(bad[0].error or f"wrong text: {bad[0].text[-60:]!r}") if bad else None,
        ttft_median=statistics.median([r.ttft for r in good]) if good else None,
        client_cpu=client_cpu,
    )


# -- conversations with history ---------------------------------------------------------
USER_TEXT = "Could you explain how this part works, with an example? " * 3
ASSISTANT_TEXT = (
    "Sure. Here is how it works, step by step:\n\n1. **First** the request is read.\n"
    "2. Then the data is checked.\n\n```python\ndef handle(request):\n    return request\n```\n"
    "| step | cost |\n|---|---|\n| read | low |\n| check | low |\n\n"
) * 4  # ~1.3 KB of Markdown


def seed_messages(count: int) -> list[dict]:
    turns = []
    for i in range(count // 2):
        turns.append({"role": "user", "content": f"{i}: {USER_TEXT}"})
        turns.append({"role": "assistant", "content": ASSISTANT_TEXT, "status": "complete"})
    return turns


def as_chatbot(messages: list[dict]) -> list[dict]:
    """The same messages as a browser holds them in a Chatbot (the baseline's history)."""
    return [
        {"role": message["role"], "content": [{"type": "text", "text": message["content"]}]}
        for message in messages
    ]


async def seed_conversations(redis_url: str | None, count: int, messages: int) -> list[tuple]:
    """Stored conversations (browser id, conversation id) written through history.py."""
    from history import HistoryStore, new_id

    store = await HistoryStore.connect(redis_url)
    made = []
    try:
        for _ in range(count):
            browser = new_id()
            cid = await store.create_conversation(browser, title="A long chat", role="assistant")
            await store.append_turn(cid, seed_messages(messages), browser_id=browser)
            made.append((browser, cid))
    finally:
        await store.close()
    return made


async def open_in_session(target: Target, session: Session, browser: str, cid: str) -> None:
    """Ours: the page load reopens the browser's conversation (as after a reload)."""
    state_id = next(i for i, t in target.page.types.items() if t == "browserstate")
    session.values[state_id] = {"browser_id": browser, "conversation_id": cid}
    on_load = target.page.dep("on_load")
    run = Run(start=time.monotonic())
    if not await session.call(on_load, run, chatbot_text) or run.error:
        raise RuntimeError(f"on_load failed: {run.error}")


async def baseline_history(target: Target, session: Session, shown: list) -> None:
    """The baseline keeps history in the session: put the same messages there, as the
    ChatInterface's own chatbot -> state sync does after a turn."""
    chatbot = next(i for i, t in target.page.types.items() if t == "chatbot")
    session.values[chatbot] = json.loads(json.dumps(shown))
    submit = target.page.dep("_submit_fn")
    sync = next(d for d in target.page.deps if d.after == submit.index and d.inputs == [chatbot])
    if not await session.call(sync, Run(start=time.monotonic())):
        raise RuntimeError("baseline history sync failed")


async def long_chat(target: Target, chats: dict[int, tuple], repeats: int, idle: float) -> dict:
    """Marginal server CPU and bytes per streamed update in the browser path, by number of
    earlier messages: (CPU of a 100-token turn - CPU of a 5-token turn) / (extra updates),
    so the fixed cost of a turn (session, history, provider request) is left out, and so is
    what the process burns idle meanwhile (Gradio's queue polls every millisecond)."""
    out = {}
    async with new_http() as http:
        for size, (browser, cid, shown) in chats.items():
            totals = {QUICK: [0.0, 0, 0], "long": [0.0, 0, 0]}  # cpu, updates, diff bytes
            for _ in range(repeats):
                for kind, message in ((QUICK, f"{QUICK} one more"), ("long", "one more")):
                    session = target.session(http)
                    if target.ours and cid:
                        await open_in_session(target, session, browser, cid)
                    elif not target.ours and shown:
                        await baseline_history(target, session, shown)
                    cpu0, started = target.app.cpu(), time.monotonic()
                    run = await target.send(session, message, "ui")
                    if run.error:
                        raise RuntimeError(f"long chat {size}: {run.error}")
                    wall = time.monotonic() - started
                    totals[kind][0] += target.app.cpu() - cpu0 - idle * wall
                    totals[kind][1] += run.updates
                    totals[kind][2] += run.diff_bytes
            (cpu_q, upd_q, _), (cpu_l, upd_l, sent) = totals[QUICK], totals["long"]
            extra = max(1, upd_l - upd_q)
            out[size] = ((cpu_l - cpu_q) / extra * 1000, sent / max(1, upd_l), upd_l // repeats)
    return out


async def idle_cpu_rate(app: App, seconds: float = 3.0) -> float:
    """CPU seconds per second the app uses doing nothing."""
    cpu0 = app.cpu()
    await asyncio.sleep(seconds)
    return (app.cpu() - cpu0) / seconds


async def probe(http: httpx.AsyncClient, url: str, until: asyncio.Event) -> list[float]:
    """Latency of GET /health (one Redis PING) every 20 ms: what any work left on the event
    loop would hold up."""
    times = []
    while not until.is_set():
        started = time.monotonic()
        response = await http.get(f"{url}/health")
        response.raise_for_status()
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.02)
    return times


async def photo_turn(target: Target, http: httpx.AsyncClient, photo: bytes) -> Run:
    """Upload a photo and ask about it through /chat, as gradio_client does."""
    session = target.session(http)
    files = {"files": ("photo.jpg", photo, "image/jpeg")}
    uploaded = await http.post(
        f"{target.app.url}/gradio_api/upload", files=files, headers=session.headers
    )
    uploaded.raise_for_status()
    path = uploaded.json()[0]
    images = [{"path": path, "orig_name": "photo.jpg", "meta": {"_type": "gradio.FileData"}}]
    data = [f"{PROBE} what is this?", images, *session._data(target.api)[2:]]
    run = Run(start=time.monotonic())
    await session.call(target.api, run, api_text, data=data)
    return run


async def responsiveness(target: Target, users: int = 4) -> tuple[float, float]:
    """/health latency idle (median) and its worst while `users` send a 12 MP photo each:
    image work left on the event loop would show here as a stall of hundreds of ms."""
    from tests.image_corpus import photo_jpeg

    photo = photo_jpeg()
    async with new_http() as http:
        await photo_turn(target, http, photo)  # warm-up: the first image loads Pillow's plugins
        stop = asyncio.Event()
        idle = asyncio.create_task(probe(http, target.app.url, stop))
        await asyncio.sleep(1.0)
        stop.set()
        idle_times = await idle
        stop = asyncio.Event()
        busy = asyncio.create_task(probe(http, target.app.url, stop))
        runs = await asyncio.gather(*(photo_turn(target, http, photo) for _ in range(users)))
        stop.set()
        busy_times = await busy
    if failed := [r.error for r in runs if r.error or not r.text]:
        raise RuntimeError(f"photo turns failed: {failed[0]}")
    return statistics.median(idle_times) * 1000, max(busy_times) * 1000


async def memory(target: Target, convs: list[tuple], shown: list) -> float:
    """RSS after 100 sessions each opened a 20-message conversation and sent one message."""
    async with new_http() as http:
        for browser, cid in convs:
            session = target.session(http)
            if target.ours:
                await open_in_session(target, session, browser, cid)
            else:
                await baseline_history(target, session, shown)
            run = await target.send(session, f"{QUICK} memory", "ui")
            if run.error:
                raise RuntimeError(f"memory: {run.error}")
    await asyncio.sleep(1.0)
    return target.app.rss()


# --------------------------------------------------------------------------------------
# The run


@dataclass
class Plan:
    ttft_samples: int = 15
    users: tuple[int, ...] = (1, 40, 200)
    repeats: int = 3  # runs of the 1- and 40-user loads (the median is shown)
    cap: float = 20.0  # s: a load still running after this is cut off ("> cap")
    long_repeats: int = 3
    sessions: int = 100


async def measure(target: Target, upstream: Upstream, plan: Plan, fixtures: dict) -> Results:
    res = Results(target.app.name, startup_s=target.app.startup_s)
    name = target.app.name
    for path in ("api", "ui"):  # warm-up: lazy imports, connection pools
        await app_ttft(target, path, 1)
    res.rss_idle = target.app.rss()
    log(f"{name}: memory with {plan.sessions} open conversations")
    res.rss_loaded = await memory(target, fixtures["memory"], fixtures["shown20"])
    for path in ("api", "ui"):
        log(f"{name}: TTFT via {path}")
        res.ttft[path] = await app_ttft(target, path, plan.ttft_samples)
    log(f"{name}: long conversation")
    res.idle_cpu = await idle_cpu_rate(target.app)
    res.long_chat = await long_chat(target, fixtures["long"], plan.long_repeats, res.idle_cpu)
    if target.ours:  # the baseline takes text only
        log(f"{name}: responsiveness while photos are processed")
        res.probe_ms = await responsiveness(target)
    for path in ("api", "ui"):
        for users in plan.users:
            log(f"{name}: {users} users via {path}")
            # The median of a few runs where they are short (noise), one where it is cut off.
            runs = [await load(target, upstream, path, users, plan.cap)]
            while users <= 40 and runs[-1].wall is not None and len(runs) < plan.repeats:
                runs.append(await load(target, upstream, path, users, plan.cap))
            ordered = sorted(runs, key=lambda r: r.wall if r.wall is not None else 1e9)
            res.loads[(path, users)] = ordered[len(ordered) // 2]
    return res


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def prepare(redis_url: str | None, plan: Plan) -> dict:
    """Stored conversations for ours; the same messages as Chatbot values for the baseline
    (which keeps history in the session: all 200 are in its Chatbot)."""
    convs20 = await seed_conversations(redis_url, plan.sessions, 20)
    (b200, c200), (b0, c0) = (await seed_conversations(redis_url, 1, 200))[0], ("", "")
    return {
        "memory": convs20,
        "shown20": as_chatbot(seed_messages(20)),
        "long": {0: (b0, c0, []), 200: (b200, c200, as_chatbot(seed_messages(200)))},
    }


def start_redis() -> tuple[Any, str | None]:
    if not shutil.which("redis-server"):
        log("redis-server not installed: this app uses its embedded store (fakeredis)")
        return None, None
    from tests.servers import RedisServer

    server = RedisServer().start()
    return server, server.url


async def main_async(plan: Plan) -> tuple[list[Results], float, dict]:
    upstream = Upstream()
    redis_server, redis_url = start_redis()
    results, apps = [], []
    try:
        direct = await direct_ttft(upstream.base_url, plan.ttft_samples)
        env = {"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": upstream.base_url}
        ours_env = {**env, "OPENAI_MODELS": MODEL, "DEFAULT_PROVIDER": "openai"}
        ours_env["OPENAI_VISION_MODELS"] = MODEL
        # A throughput test: the global ceiling on turns (a public deployment's safety net,
        # 600 a minute by default) would refuse the repeated 200-user bursts.
        ours_env["RATE_LIMIT_GLOBAL_PER_MINUTE"] = "0"
        if redis_url:
            ours_env["REDIS_URL"] = redis_url
        log("starting this app")
        apps.append(App("this app", ROOT / "app.py", ours_env))
        ours = Target(apps[-1])
        fixtures = await prepare(redis_url, plan)
        results.append(await measure(ours, upstream, plan, fixtures))
        apps[-1].close()
        log("starting the baseline")
        base_env = {**env, "BASELINE_MODEL": MODEL}
        apps.append(App("gr.ChatInterface", ROOT / "bench" / "baseline_app.py", base_env))
        results.append(await measure(Target(apps[-1]), upstream, plan, fixtures))
        meta = {"upstream_cpu": upstream.cpu(), "redis": "redis-server" if redis_url else "none"}
        return results, direct, meta
    finally:
        for app in apps:
            app.close()
        upstream.close()
        if redis_server:
            redis_server.close()


# --------------------------------------------------------------------------------------
# The table


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def load_cell(load: Load, cap: float) -> str:
    if load.wall is None:
        return f"> {cap:.0f} s ({load.done}/{load.users} done)"
    errors = f", {load.errors} errors" if load.errors else ""
    return f"{load.wall:.2f} s{errors}"


def table(results: list[Results], direct: float, plan: Plan) -> str:
    names = [r.name for r in results]
    rows: list[tuple[str, ...]] = [
        ("TTFT added over the direct SDK call, median (api / ui)",)
        + tuple(
            f"{(r.ttft['api'] - direct) * 1000:.0f} / {(r.ttft['ui'] - direct) * 1000:.0f} ms"
            for r in results
        )
    ]
    for path in ("api", "ui"):
        single = {r.name: r.loads[(path, 1)].wall for r in results}
        for users in plan.users:
            cells = []
            for r in results:
                load = r.loads[(path, users)]
                cell = load_cell(load, plan.cap)
                if users > 1 and load.wall and single[r.name]:
                    cell += f" ({load.wall / single[r.name]:.2f}x)"
                cells.append(cell)
            rows.append((f"{users} user{'s' if users > 1 else ''} at once, {path}",) + tuple(cells))
    for path in ("api", "ui"):
        rows.append(
            (f"app CPU per 1000 tokens, 40 users, {path}",)
            + tuple(fmt(r.loads[(path, 40)].cpu_per_1k, " s") for r in results)
        )
    rows.append(
        ("ui: CPU per streamed update, chat with 0 / 200 earlier messages",)
        + tuple(f"{r.long_chat[0][0]:.2f} / {r.long_chat[200][0]:.2f} ms" for r in results)
    )
    rows.append(
        ("ui: bytes per streamed update, 0 / 200 earlier messages",)
        + tuple(f"{r.long_chat[0][1]:.0f} / {r.long_chat[200][1]:.0f} B" for r in results)
    )
    rows.append(
        ("event loop: /health latency idle (median) → max while 4 users send 12 MP photos",)
        + tuple(
            f"{r.probe_ms[0]:.1f} → {r.probe_ms[1]:.0f} ms" if r.probe_ms else "n/a (text only)"
            for r in results
        )
    )
    rows.append(
        ("CPU when idle (Gradio's queue polls every millisecond)",)
        + tuple(f"{r.idle_cpu * 100:.1f}% of a core" for r in results)
    )
    rows.append(
        ("start-up (process start to ready)",) + tuple(fmt(r.startup_s, " s") for r in results)
    )
    rows.append(
        (f"RSS idle → {plan.sessions} open 20-message chats",)
        + tuple(
            f"{r.rss_idle:.0f} → {r.rss_loaded:.0f} MB (+{r.rss_loaded - r.rss_idle:.0f})"
            for r in results
        )
    )
    return markdown(["", *names], rows)


def markdown(header: list[str], rows: list[tuple[str, ...]]) -> str:
    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def details(results: list[Results], plan: Plan) -> str:
    """Per load: TTFT median under that load, and the load generator's own CPU."""
    rows = []
    for r in results:
        for (path, users), load in sorted(r.loads.items()):
            rows.append(
                (
                    f"{r.name}, {path}, {users}",
                    fmt(load.ttft_median, " s"),
                    f"{load.client_cpu:.1f} s",
                    (load.first_error or "")[:80],
                )
            )
    header = ["app, path, users", "TTFT median under load", "load generator CPU", "first error"]
    return markdown(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter caps")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    plan = (
        Plan(ttft_samples=5, repeats=1, cap=10, long_repeats=1, sessions=30)
        if (args.quick)
        else Plan()
    )
    started, load_before = time.monotonic(), os.getloadavg()[0]
    results, direct, meta = asyncio.run(main_async(plan))
    print(table(results, direct, plan))
    print(
        f"\nDirect openai SDK TTFT: {direct * 1000:.1f} ms. {TOKENS} tokens per answer, "
        f"{TOKEN_DELAY * 1000:.0f} ms apart. History store: {meta['redis']}. "
        f"Machine: {os.cpu_count()} cores, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine skews every figure). "
        f"Fake upstream CPU: {meta['upstream_cpu']:.1f} s. "
        f"Whole run: {time.monotonic() - started:.0f} s.\n"
    )
    print(details(results, plan))


if __name__ == "__main__":
    main()
