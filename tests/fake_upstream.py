"""A real OpenAI-compatible HTTP server for tests, scripted per request.

    with FakeUpstream() as up:
        up.script(error(429, {"error": {"type": "rate_limit_exceeded"}}, {"Retry-After": "0"}),
                  reply("Hello there"))
        ... point OPENAI_BASE_URL / CUSTOM_BASE_URL at up.base_url ...
        assert len(up.requests) == 2 and up.requests[0]["model"] == "gpt-4o"

`POST .../chat/completions` pops the next scripted behaviour (default when the queue is
empty: stream "Echo: <last user text>"; `tool_calls(...)` and `from_tool_results()` for
the tool loop), `GET .../models` lists `models`. Every chat request
is recorded (`requests` = JSON bodies, `headers` = lower-cased request headers), and every
streamed answer gets a `StreamRecord` saying whether the client hung up before it ended
(`disconnects`, `disconnected` Event, `wait_for_disconnect()`), so a test can prove that
Stop closed the upstream HTTP stream.

It is a stdlib ThreadingHTTPServer (one thread per connection) speaking HTTP/1.1 with
chunked SSE, so it can also misbehave on purpose: stall, cut the body, drop the socket.
Run it by hand with `python -m tests.fake_upstream --port 8999`.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A behaviour gets the exchange (request + response helpers) and writes the response.
Behaviour = Callable[["Exchange"], None]


@dataclass
class StreamRecord:
    """One streamed answer as the server saw it."""

    index: int  # position in FakeUpstream.requests
    model: str
    started_at: float  # time.monotonic()
    chunks_sent: int = 0
    finished: bool = False  # the body was ended (normally or by a scripted cut/drop)
    disconnected: bool = False  # the client hung up before the body ended
    disconnected_at: float | None = None


class ClientGone(Exception):
    """The client closed the connection: stop writing."""


# --------------------------------------------------------------------------------------
# The exchange: what a behaviour can do


class Exchange:
    def __init__(self, handler: _Handler, body: dict, index: int) -> None:
        self.handler = handler
        self.body = body
        self.index = index
        self.upstream: FakeUpstream = handler.server.upstream  # type: ignore[attr-defined]
        self.record: StreamRecord | None = None

    # ---- request helpers

    @property
    def model(self) -> str:
        return str(self.body.get("model") or "fake-model")

    @property
    def streaming(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options") or {}
        return bool(isinstance(options, dict) and options.get("include_usage"))

    def last_user_text(self) -> str:
        for message in reversed(self.body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                parts = content if isinstance(content, list) else []
                return " ".join(
                    str(p.get("text") or "")
                    for p in parts
                    if isinstance(p, dict) and p.get("type") == "text"
                )
        return ""

    def tool_results(self) -> list[str]:
        """The `content` of the request's `tool` messages after its last user message
        (this round's results), in order."""
        messages = [m for m in self.body.get("messages") or [] if isinstance(m, dict)]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        start = users[-1] + 1 if users else 0
        return [str(m.get("content") or "") for m in messages[start:] if m.get("role") == "tool"]

    # ---- plain responses

    def send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        if isinstance(payload, str | bytes):
            data = payload.encode() if isinstance(payload, str) else payload
            content_type = "text/plain; charset=utf-8"
        else:
            data = json.dumps(payload).encode()
            content_type = "application/json"
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, str(value))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    # ---- streaming responses

    def start_stream(self) -> None:
        h = self.handler
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        self.record = self.upstream._new_stream(self.index, self.model)

    def send_raw(self, text: str | bytes) -> None:
        """One HTTP chunk of raw bytes (an SSE line or anything else; bytes go as they are,
        e.g. invalid UTF-8)."""
        data = text if isinstance(text, bytes) else text.encode()
        try:
            self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.handler.wfile.flush()
        except OSError as exc:
            self._gone()
            raise ClientGone from exc
        if self.record:
            self.record.chunks_sent += 1

    def send_event(self, payload: Any) -> None:
        self.send_raw(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n")

    def send_delta(self, delta: dict, finish: str | None = None) -> None:
        self.send_event(self.chunk(delta, finish))

    def chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fake-{self.index}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            payload["usage"] = usage
        return payload

    def send_text(self, text: str, chunk_size: int = 4, delay: float = 0.0, field: str = "content"):
        for piece in _split(text, chunk_size):
            if field == "content":
                self.send_delta({"role": "assistant", "content": piece})
            else:
                self.send_delta({"role": "assistant", "content": None, field: piece})
            if delay:
                self.pause(delay)

    def send_usage(self, completion_text: str) -> None:
        prompt = max(1, len(json.dumps(self.body.get("messages") or [])) // 4)
        completion = max(1, len(completion_text.split()))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        payload = self.chunk({}, None, usage)
        payload["choices"] = []
        self.send_event(payload)

    def end_stream(self, done: bool = True) -> None:
        """End the body properly: `data: [DONE]` (optional) and the last HTTP chunk."""
        if done:
            self.send_raw("data: [DONE]\n\n")
        try:
            self.handler.wfile.write(b"0\r\n\r\n")
            self.handler.wfile.flush()
        except OSError as exc:
            self._gone()
            raise ClientGone from exc
        if self.record:
            self.record.finished = True

    def pause(self, seconds: float) -> None:
        """Wait, but notice at once when the client hangs up (raises ClientGone)."""
        deadline = time.monotonic() + seconds
        sock = self.handler.connection
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.upstream._closing.is_set():
                return
            readable, _, _ = select.select([sock], [], [], min(remaining, 0.02))
            if readable and self._peer_closed(sock):
                self._gone()
                raise ClientGone
            if readable:
                time.sleep(min(remaining, 0.02))  # data, not EOF: nothing to do but wait

    def drop(self) -> None:
        """Close the socket abruptly: no response, or no end to the body."""
        with contextlib.suppress(OSError):
            self.handler.wfile.flush()
        with contextlib.suppress(OSError):
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        self.handler.close_connection = True
        if self.record:
            self.record.finished = True

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _gone(self) -> None:
        self.handler.close_connection = True
        if self.record and not self.record.finished and not self.record.disconnected:
            self.record.disconnected = True
            self.record.disconnected_at = time.monotonic()
            self.upstream.disconnected.set()


def _split(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------------------
# Behaviours


def reply(
    text: str,
    *,
    chunk_size: int = 4,
    delay: float = 0.0,
    reasoning: str = "",
    reasoning_field: str = "reasoning_content",
    finish: str = "stop",
) -> Behaviour:
    """A normal answer: reasoning chunks (if any), content chunks, finish_reason, usage
    chunk when `stream_options.include_usage` was sent, `[DONE]`. Non-streaming requests get
    one chat.completion object."""

    def run(ex: Exchange) -> None:
        if not ex.streaming:
            ex.send_json(200, _completion(ex, text, reasoning, finish))
            return
        ex.start_stream()
        ex.send_text(reasoning, chunk_size, delay, field=reasoning_field)
        ex.send_text(text, chunk_size, delay)
        ex.send_delta({}, finish)
        if ex.include_usage:
            ex.send_usage(text)
        ex.end_stream()

    return run


def slow(text: str, delay: float = 0.05, *, chunk_size: int = 4) -> Behaviour:
    """A long, slow answer for Stop tests: `delay` seconds between chunks."""
    return reply(text, chunk_size=chunk_size, delay=delay)


def echo() -> Behaviour:
    """The default: stream "Echo: <last user text>"."""

    def run(ex: Exchange) -> None:
        reply(f"Echo: {ex.last_user_text()}")(ex)

    return run


def error(status: int, body: dict | str, headers: dict | None = None) -> Behaviour:
    """An HTTP error before any stream: JSON body for a dict, text/plain for a str."""

    def run(ex: Exchange) -> None:
        ex.send_json(status, body, headers)

    return run


def stall(after_text: str = "", seconds: float = 30.0) -> Behaviour:
    """Send some chunks, then nothing while keeping the connection open; then drop it."""

    def run(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_text(after_text)
        ex.pause(seconds)
        ex.drop()

    return run


def cut(after_text: str = "") -> Behaviour:
    """End the body cleanly but without finish_reason and without [DONE]."""

    def run(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_text(after_text)
        ex.end_stream(done=False)

    return run


def mid_error(after_text: str = "", error: dict | None = None) -> Behaviour:
    """Some chunks, then a `data: {"error": {...}}` chunk, then the end of the body."""
    obj = error or {"message": "Upstream model crashed", "type": "server_error"}

    def run(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_text(after_text)
        ex.send_event({"error": obj})
        ex.end_stream()

    return run


def malformed(after_text: str = "") -> Behaviour:
    """Some chunks, then a `data: {not json` line, then the end of the body."""

    def run(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_text(after_text)
        ex.send_raw("data: {not json\n\n")
        ex.end_stream()

    return run


def drop_connection(after_text: str | None = None) -> Behaviour:
    """Close the socket: with no response at all (None), or mid-body after `after_text`."""

    def run(ex: Exchange) -> None:
        if after_text is not None:
            ex.start_stream()
            ex.send_text(after_text)
        ex.drop()

    return run


def tool_calls(
    *calls: tuple[str, dict], split: int = 3, content: str = "", chunk_size: int = 4
) -> Behaviour:
    """The model asks for tools: `content` first (if any), then each `(name, arguments)`
    call the way OpenAI streams it: a first piece with `id` ("call_<request>_<n>"), `type`
    and the name, then the arguments' JSON cut into `split` pieces; the calls' pieces
    interleave (every first piece, then every call's 1st fragment, ...). Then
    finish_reason "tool_calls", the usage chunk when asked, `[DONE]`. Non-streaming
    requests get one chat.completion with `message.tool_calls`."""

    def run(ex: Exchange) -> None:
        ids = [f"call_{ex.index}_{n}" for n in range(len(calls))]
        texts = [json.dumps(arguments, ensure_ascii=False) for _, arguments in calls]
        if not ex.streaming:
            ex.send_json(200, _tool_completion(ex, content, calls, ids, texts))
            return
        ex.start_stream()
        ex.send_text(content, chunk_size)
        for n, (name, _) in enumerate(calls):
            first = {"index": n, "id": ids[n], "type": "function"}
            ex.send_delta(_tool_delta(dict(first, function={"name": name, "arguments": ""})))
        pieces = [_split(text, -(-len(text) // max(1, split))) for text in texts]
        for round_ in range(max((len(p) for p in pieces), default=0)):
            for n, parts in enumerate(pieces):
                if round_ < len(parts):
                    piece = {"index": n, "function": {"arguments": parts[round_]}}
                    ex.send_delta(_tool_delta(piece))
        ex.send_delta({}, "tool_calls")
        if ex.include_usage:
            ex.send_usage(content + " " + " ".join(texts))
        ex.end_stream()

    return run


def from_tool_results(prefix: str = "Result: ") -> Behaviour:
    """Answer with this round's tool results (`Exchange.tool_results`), joined by " | "
    after `prefix`, so a test sees that the results reached the model; "No tool results."
    when the request had none."""

    def run(ex: Exchange) -> None:
        results = ex.tool_results()
        reply(prefix + " | ".join(results) if results else "No tool results.")(ex)

    return run


def _tool_delta(piece: dict) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [piece]}


def _tool_completion(
    ex: Exchange, content: str, calls: tuple[tuple[str, dict], ...], ids: list, texts: list
) -> dict:
    completion = _completion(ex, content, "", "tool_calls")
    message = completion["choices"][0]["message"]
    message["content"] = content or None
    message["tool_calls"] = [
        {"id": ids[n], "type": "function", "function": {"name": name, "arguments": texts[n]}}
        for n, (name, _) in enumerate(calls)
    ]
    return completion


def _completion(ex: Exchange, text: str, reasoning: str, finish: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": f"chatcmpl-fake-{ex.index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ex.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


# --------------------------------------------------------------------------------------
# The server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like real providers
    # Small SSE chunks must go out at once: with Nagle + delayed ACK each first token waits
    # ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        upstream = self.server.upstream
        if self.path.split("?")[0].rstrip("/") in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in upstream.models]
            self._reply(200, {"object": "list", "data": data})
        else:
            self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0] not in ("/v1/chat/completions", "/chat/completions"):
            self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._reply(400, {"error": {"message": "body is not JSON", "type": "invalid_json"}})
            return
        upstream = self.server.upstream
        headers = {k.lower(): v for k, v in self.headers.items()}
        index, behaviour = upstream._record(body, headers, self.path, self.client_address)
        if upstream.api_key and headers.get("authorization") != f"Bearer {upstream.api_key}":
            behaviour = error(
                401,
                {
                    "error": {
                        "message": "Invalid API key",
                        "type": "invalid_api_key",
                        "code": "invalid_api_key",
                    }
                },
            )
        exchange = Exchange(self, body, index)
        try:
            behaviour(exchange)
        except ClientGone:
            pass
        except (BrokenPipeError, ConnectionResetError):
            exchange._gone()

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    upstream: FakeUpstream


class FakeUpstream:
    """The scripted OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        *,
        models: tuple[str, ...] | list[str] = ("fake-model", "fake-vision"),
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        self.models = list(models)
        self.api_key = api_key  # when set, other Authorization headers get a 401
        self.requests: list[dict] = []  # JSON bodies of chat requests, in arrival order
        self.headers: list[dict[str, str]] = []  # their headers, lower-cased names
        self.paths: list[str] = []
        self.peers: list[tuple] = []  # (host, port) each request came from: a connection
        self.streams: list[StreamRecord] = []
        self.disconnected = threading.Event()  # set on any early client hang-up
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.upstream = self
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # wakes stalled handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # ---- scripting and inspection

    def script(self, *behaviours: Behaviour) -> FakeUpstream:
        """Queue behaviours for the next requests, in order; then the default echo."""
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.headers.clear()
            self.paths.clear()
            self.peers.clear()
            self.streams.clear()
            self.disconnected.clear()

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet used."""
        return len(self._queue)

    @property
    def disconnects(self) -> list[StreamRecord]:
        """Streams whose client hung up before the body ended."""
        return [s for s in self.streams if s.disconnected]

    def wait_for_disconnect(self, timeout: float = 2.0) -> bool:
        return self.disconnected.wait(timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            time.sleep(0.01)
        return len(self.requests) >= count

    # ---- used by the handler

    def _record(
        self, body: dict, headers: dict[str, str], path: str, peer: tuple = ()
    ) -> tuple[int, Behaviour]:
        with self._lock:
            self.peers.append(peer)
            self.requests.append(body)
            self.headers.append(headers)
            self.paths.append(path)
            behaviour = self._queue.popleft() if self._queue else echo()
            return len(self.requests) - 1, behaviour

    def _new_stream(self, index: int, model: str) -> StreamRecord:
        record = StreamRecord(index=index, model=model, started_at=time.monotonic())
        with self._lock:
            self.streams.append(record)
        return record


# --------------------------------------------------------------------------------------
# Network tricks that need no scripted server (loopback only)


def free_port() -> int:
    """A port with nothing listening on it: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def unaccepted_port(fill: int = 4) -> Iterator[int]:
    """A loopback port whose listen backlog is full, so a new connect() hangs until the
    client's connect timeout (Linux drops the SYN). No non-loopback traffic involved."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(fill):
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except OSError:
                break  # this one already hangs: the queue is full
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible upstream.")
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args()
    with FakeUpstream(port=args.port) as upstream:
        print(f"fake upstream at {upstream.base_url} (echo replies); Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()


__all__ = [
    "Exchange",
    "FakeUpstream",
    "StreamRecord",
    "cut",
    "drop_connection",
    "echo",
    "error",
    "free_port",
    "from_tool_results",
    "malformed",
    "mid_error",
    "reply",
    "slow",
    "stall",
    "tool_calls",
    "unaccepted_port",
]
