"""The one stream-and-finish path of every turn (stored or stateless): stream the provider's
answer as snapshots at a shared pace, then map errors to a status, count usage and cost,
save (stored turns) and log one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

from chat_context import Context
from chat_types import STOPPED, Plan, Status, TurnUpdate
from history import HistoryUnavailable
from providers import (
    ContentDelta,
    Finished,
    ProviderError,
    Providers,
    ReasoningDelta,
    StreamEvent,
)
from token_usage import usage_of

log = logging.getLogger("chat")

# Each update costs the server about the same CPU whatever it carries (Gradio's postprocess
# and diff, one SSE message: ~1.5-2.5 ms), so all streams of the process share one budget of
# updates per second: with many streams open each gets fewer, larger updates and the CPU never
# saturates. Alone a stream gets 20 updates/s; 7 share them at full rate; 40 get ~4/s each
# (measured in bench/bench_load.py: 40 streams at 20 updates/s each cost more than a core).
UPDATES_PER_SECOND = 150
_open_streams = 0


def update_interval(base: float) -> float:
    """Seconds between two updates of one stream: `base`, longer while many streams are open."""
    return max(base, _open_streams / UPDATES_PER_SECOND)


async def coalesce(
    events: AsyncIterator[StreamEvent], interval: float
) -> AsyncIterator[list[StreamEvent]]:
    """Batch upstream events: the first goes out at once, then at most one batch per
    `interval` (stretched by `update_interval` while many streams are open).

    A pump task reads the upstream while we wait, so a pause upstream never holds back text
    that already arrived. Closing this generator (Stop, a client gone) cancels the pump,
    which closes the upstream HTTP stream.
    """
    global _open_streams
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except Exception as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(done)

    def ends(batch: list) -> bool:
        return batch[-1] is done or isinstance(batch[-1], Exception)

    task = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    _open_streams += 1
    try:
        finished = False
        next_at = 0.0  # leading edge: an event after a quiet spell (the first) goes out at once
        while not finished:
            batch = [await queue.get()]
            wait = next_at - loop.time()
            if wait > 0 and not ends(batch):
                # One timer per update, not one per token; wakes early when the stream ends.
                await asyncio.wait([task], timeout=wait)
            while not ends(batch) and not queue.empty():
                batch.append(queue.get_nowait())
            next_at = loop.time() + update_interval(interval)
            if batch[-1] is done:
                finished = True
                batch.pop()
            error = batch.pop() if batch and isinstance(batch[-1], Exception) else None
            if batch:
                yield batch
            if error is not None:
                raise error
    finally:
        _open_streams -= 1
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        close = getattr(events, "aclose", None)  # an async generator's: closes the upstream
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


Saver = Callable[[TurnUpdate], Awaitable[TurnUpdate]]


async def stream_and_finish(
    providers: Providers,
    first: TurnUpdate,
    context: Callable[[], Awaitable[Context]],
    plan: Plan,
    *,
    interval: float,
    image_count: int,
    save: Saver | None = None,
) -> AsyncGenerator[TurnUpdate, None]:
    """Yield `first`, build the context, stream the answer as snapshots, then the last
    update (`done`): errors become its status, usage and cost are counted, `save` stores it
    (shielded: a Stop cancels this task, but the partial answer must still be saved) and
    may set its `messages`; one log line."""
    update, built = first, None
    started = time.monotonic()
    try:
        yield update
        update = replace(update, messages=None)
        built = await context()
        events = providers.stream(
            plan.provider.id, plan.model, built.messages, **plan.sampling, api_key=plan.api_key
        )
        async for batch in coalesce(events, interval):
            update = with_events(update, batch)
            yield update
        update = replace(update, status=Status.COMPLETE)
        if update.finished and update.finished.reason == "length":
            error = "The answer hit the model's length limit. Ask it to continue."
            update = replace(update, status=Status.INCOMPLETE, error=error)
    except ProviderError as exc:
        status = Status.INCOMPLETE if update.answer else Status.ERROR
        update = replace(update, status=status, error=str(exc), error_code=exc.code)
    except HistoryUnavailable as exc:
        update = replace(update, status=Status.ERROR, error=f"{exc} Press Retry when it is back.")
    except (asyncio.CancelledError, GeneratorExit):
        update = replace(update, status=Status.INCOMPLETE, error=STOPPED)
        raise
    finally:
        if update.status == Status.STREAMING:  # closed without a Stop or an error: stopped
            update = replace(update, status=Status.INCOMPLETE, error=STOPPED)
        usage = usage_of(
            update.finished,
            built.messages if built else [],
            answer=update.answer + update.reasoning,
            model=update.model,
            provider=update.provider,
            image_tokens=built.image_tokens if built else None,
        )
        update = replace(update, messages=None, usage=usage)
        if save is not None:
            update = await asyncio.shield(save(update))
        log_turn(update, image_count, started)
    yield replace(update, done=True)


def with_events(update: TurnUpdate, batch: Sequence[StreamEvent]) -> TurnUpdate:
    """The next snapshot: `update` with a batch of the provider's events added."""
    answer, reasoning, finished = [update.answer], [update.reasoning], update.finished
    for event in batch:
        if isinstance(event, ContentDelta):
            answer.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    return replace(
        update,
        answer="".join(answer),
        reasoning="".join(reasoning),
        finished=finished,
        first_token_at=update.first_token_at or time.monotonic(),
    )


def answer_message(update: TurnUpdate) -> dict:
    """The stored form of a finished answer."""
    message = {
        "role": "assistant",
        "content": update.answer,
        "status": str(update.status),
        "provider": update.provider,
        "model": update.model,
        "created": time.time(),
    }
    if update.reasoning:
        message["reasoning"] = update.reasoning
    if update.error:
        message["error"] = update.error
    if update.usage:
        message["usage"] = update.usage
    return message


def log_turn(update: TurnUpdate, images: int, started: float) -> None:
    """One structured line per turn; never the message text or a key."""
    now = time.monotonic()
    record = {
        "event": "chat_turn",
        "request_id": update.request_id,
        "conversation": update.conversation_id[:8],
        "provider": update.provider,
        "model": update.model,
        "images": images,
        "tokens": (update.usage or {}).get("total_tokens"),
        "ttft_ms": (
            round((update.first_token_at - started) * 1000) if update.first_token_at else None
        ),
        "duration_ms": round((now - started) * 1000),
        "outcome": str(update.status) if update.error != STOPPED else "stopped",
    }
    log.info(json.dumps(record))
