"""One chat turn, free of any UI: load history -> build the request -> stream -> persist.

`app.py` wires Gradio to `ChatService`; the public API and the browser UI share this code, so
a turn behaves the same whichever way it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings
from history import HistoryStore, HistoryUnavailable, InvalidId, is_valid_id
from images import DETAILS, ImageRejected, PreparedImage, prepare_images, receipt_text
from providers import (
    ContentDelta,
    Finished,
    Provider,
    ProviderError,
    Providers,
    ReasoningDelta,
    StreamEvent,
)

log = logging.getLogger("chat")

TITLE_CHARS = 48


class ChatError(Exception):
    """A refusal before anything was sent: str() is the user-facing message."""


@dataclass
class TurnRequest:
    text: str = ""
    images: Sequence[str] = ()  # file paths (uploads)
    role: str = DEFAULT_ROLE
    system_prompt: str = ""  # a custom prompt; wins over the role's when given
    provider: str = ""
    model: str = ""
    detail: str = "auto"
    conversation_id: str = ""
    browser_id: str | None = None  # None: an API turn, not listed under any browser


@dataclass
class TurnUpdate:
    """The state of the answer so far; the last one of a turn has `done=True`."""

    conversation_id: str
    answer: str = ""
    reasoning: str = ""
    done: bool = False
    status: str = "streaming"  # streaming | complete | incomplete | error
    error: str | None = None
    provider: str = ""
    model: str = ""
    receipts: list[str] = field(default_factory=list)
    usage: dict | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def conversation_title(text: str, image_count: int) -> str:
    words = " ".join(text.split())
    if not words:
        return (
            "Image" if image_count == 1 else f"{image_count} images" if image_count else "New chat"
        )
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1].rstrip() + "…"


def system_prompt_for(role: str, custom_prompt: str = "") -> str:
    """The system prompt actually sent (the seed service forgot to send it)."""
    if custom_prompt.strip():
        return custom_prompt.strip()
    if role == CUSTOM_ROLE:
        return ROLES[DEFAULT_ROLE].prompt
    if role not in ROLES:
        known = ", ".join([*ROLES, CUSTOM_ROLE])
        raise ChatError(f"Unknown role {role!r}. Pick one of: {known}.")
    return ROLES[role].prompt


async def coalesce(
    events: AsyncIterator[StreamEvent], interval: float
) -> AsyncIterator[list[StreamEvent]]:
    """Batch upstream events so the browser gets at most one update per `interval`.

    A pump task reads the upstream while we wait, so a pause upstream never holds back text
    that already arrived, and the first token goes out at once. Closing this generator (Stop,
    a client gone) cancels the pump, which closes the upstream HTTP stream.
    """
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

    task = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    try:
        finished = False
        while not finished:
            batch = [await queue.get()]
            deadline = loop.time() + interval
            while batch[-1] is not done and not isinstance(batch[-1], Exception):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            if batch[-1] is done:
                finished = True
                batch.pop()
            error = batch.pop() if batch and isinstance(batch[-1], Exception) else None
            if batch:
                yield batch
            if error is not None:
                raise error
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await events.aclose()


class ChatService:
    """Runs turns against a provider registry and a history store."""

    def __init__(self, settings: Settings, providers: Providers, image_dir: Path) -> None:
        self.settings = settings
        self.providers = providers
        self.image_dir = image_dir
        self.stream_interval = 0.05
        self._store: HistoryStore | None = None
        self._store_lock = asyncio.Lock()

    # -- the store is opened lazily, on the serving event loop (redis.asyncio binds to it)
    async def store(self) -> HistoryStore:
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    self._store = await HistoryStore.connect(
                        self.settings.redis_url,
                        ttl_seconds=self.settings.history_ttl_seconds,
                        max_messages=self.settings.history_max_messages,
                    )
        return self._store

    async def aclose(self) -> None:
        await self.providers.aclose()
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- validation -------------------------------------------------------------------
    def _check_limits(self, text: str, images: Sequence[str]) -> None:
        if not text.strip() and not images:
            raise ChatError("Type a message or attach an image first.")
        if len(text) > self.settings.max_message_chars:
            raise ChatError(
                f"The message is {len(text):,} characters long; the limit is "
                f"{self.settings.max_message_chars:,}. Shorten it or send it in parts."
            )
        if len(images) > self.settings.max_images_per_message:
            raise ChatError(
                f"{len(images)} images attached; at most {self.settings.max_images_per_message} "
                "can go in one message. Remove some and send again."
            )

    def _resolve(self, provider_id: str, model: str) -> tuple[Provider, str]:
        try:
            return self.providers.resolve(provider_id or "", model or "")
        except ProviderError as exc:
            raise ChatError(str(exc)) from None

    async def _conversation_meta(self, store: HistoryStore, cid: str) -> dict | None:
        if not cid:
            return None
        try:
            meta = await store.get_meta(cid)
        except InvalidId:
            raise ChatError("That conversation id is not valid. Start a new chat.") from None
        if meta is None:
            raise ChatError(
                "That conversation no longer exists (it may have expired). Start a new chat."
            )
        return meta

    async def _prepare(
        self, paths: Sequence[str], provider: Provider, model: str, detail: str
    ) -> list[PreparedImage]:
        if not paths:
            return []
        if not provider.supports_vision(model):
            raise ChatError(
                f"{model} cannot see images. Pick a vision model (marked 👁) or remove the "
                "images and send again."
            )
        items = []
        for path in paths:
            name = Path(path).name
            try:
                items.append((name, await asyncio.to_thread(Path(path).read_bytes)))
            except OSError:
                raise ChatError(f'"{name}" could not be read. Attach it again.') from None
        try:
            return await prepare_images(
                items,
                max_bytes=self.settings.max_image_bytes,
                provider_id=provider.id,
                model=model,
                detail=detail,
            )
        except ImageRejected as exc:
            raise ChatError(str(exc)) from None

    # -- one turn -----------------------------------------------------------------------
    async def turn(self, req: TurnRequest) -> AsyncIterator[TurnUpdate]:
        """Validate, store the user's message, stream the answer, store the answer.

        Raises ChatError before anything is stored or sent; once the stream has started,
        failures end the turn with an update whose status is "error" or "incomplete" and whose
        `answer` keeps whatever arrived.
        """
        text = req.text or ""
        images = list(req.images or [])
        self._check_limits(text, images)
        detail = req.detail if req.detail in DETAILS else "auto"
        system_prompt = system_prompt_for(req.role, req.system_prompt)
        provider, model = self._resolve(req.provider, req.model)
        try:
            store = await self.store()
            meta = await self._conversation_meta(store, req.conversation_id)
            prepared = await self._prepare(images, provider, model, detail)
            cid = (
                meta["id"]
                if meta
                else await store.create_conversation(
                    req.browser_id,
                    title=conversation_title(text, len(prepared)),
                    role=req.role,
                    provider=provider.id,
                    model=model,
                )
            )
            user_message = {
                "role": "user",
                "content": text,
                "images": [image_ref(image) for image in prepared],
                "created": time.time(),
            }
            if prepared:
                user_message["receipts"] = [
                    receipt_text(image, provider.id, model, detail) for image in prepared
                ]
            await store.append_turn(
                cid,
                [user_message],
                {image.sha256: (image.data, image.mime) for image in prepared},
                browser_id=req.browser_id,
            )
            await store.update_meta(cid, role=req.role, provider=provider.id, model=model)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Your message was not sent; send it again.") from None
        except InvalidId:  # deleted meanwhile, or not this browser's
            raise ChatError("That conversation is no longer available. Start a new chat.") from None
        answer = self._answer(store, cid, provider, model, system_prompt, detail, len(prepared))
        async for update in answer:
            update.receipts = user_message.get("receipts", [])
            yield update

    async def retry(
        self,
        cid: str,
        *,
        role: str = DEFAULT_ROLE,
        system_prompt: str = "",
        provider: str = "",
        model: str = "",
        detail: str = "auto",
    ) -> AsyncIterator[TurnUpdate]:
        """Answer the last user message again (the failed or unwanted answer is replaced)."""
        prompt = system_prompt_for(role, system_prompt)
        chosen, model_id = self._resolve(provider, model)
        try:
            store = await self.store()
            await self._conversation_meta(store, cid)
            messages = await store.get_messages(cid)
            trailing = 0
            while trailing < len(messages) and messages[-1 - trailing]["role"] == "assistant":
                trailing += 1
            if trailing == len(messages):
                raise ChatError("There is no message to answer again yet.")
            last_user = messages[-1 - trailing]
            if last_user.get("images") and not chosen.supports_vision(model_id):
                raise ChatError(f"{model_id} cannot see images. Pick a vision model (marked 👁).")
            if trailing:
                await store.pop_messages(cid, trailing)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        images = len(last_user.get("images") or [])
        async for update in self._answer(store, cid, chosen, model_id, prompt, detail, images):
            yield update

    async def undo(self, cid: str) -> dict | None:
        """Remove the last user message and its answers; return that user message."""
        try:
            store = await self.store()
            await self._conversation_meta(store, cid)
            messages = await store.get_messages(cid)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        count = 0
        while count < len(messages) and messages[-1 - count]["role"] == "assistant":
            count += 1
        if count == len(messages):
            return None
        removed = await store.pop_messages(cid, count + 1)
        return removed[0] if removed else None

    async def _answer(
        self,
        store: HistoryStore,
        cid: str,
        provider: Provider,
        model: str,
        system_prompt: str,
        detail: str,
        image_count: int = 0,
    ) -> AsyncIterator[TurnUpdate]:
        update = TurnUpdate(conversation_id=cid, provider=provider.id, model=model)
        finished: Finished | None = None
        started, first_token = time.monotonic(), None
        try:
            messages = await self._context(store, cid, provider, model, system_prompt, detail)
            yield update
            events = self.providers.stream(provider.id, model, messages)
            async for batch in coalesce(events, self.stream_interval):
                first_token = first_token or time.monotonic()
                for event in batch:
                    if isinstance(event, ContentDelta):
                        update.answer += event.text
                    elif isinstance(event, ReasoningDelta):
                        update.reasoning += event.text
                    elif isinstance(event, Finished):
                        finished = event
                yield update
            update.status = "complete"
            if finished and finished.reason == "length":
                update.status = "incomplete"
                update.error = "The answer hit the model's length limit. Ask it to continue."
        except ProviderError as exc:
            update.status = "incomplete" if update.answer else "error"
            update.error = str(exc)
        except HistoryUnavailable as exc:
            update.status = "error"
            update.error = f"{exc} Press Retry when it is back."
        except (asyncio.CancelledError, GeneratorExit):
            update.status = "incomplete"
            update.error = "Stopped."
            raise
        finally:
            # Shielded: a Stop cancels this task, but the partial answer must still be saved.
            update.usage = finished.usage if finished else None
            await asyncio.shield(self._save_answer(store, cid, update, finished))
            log_turn(update, image_count, started, first_token)
        update.done = True
        yield update

    async def _save_answer(
        self, store: HistoryStore, cid: str, update: TurnUpdate, finished: Finished | None
    ) -> None:
        if update.status == "streaming":  # closed without a Stop or an error: treat as stopped
            update.status, update.error = "incomplete", "Stopped."
        message = {
            "role": "assistant",
            "content": update.answer,
            "status": update.status,
            "provider": update.provider,
            "model": update.model,
            "created": time.time(),
        }
        if update.reasoning:
            message["reasoning"] = update.reasoning
        if update.error:
            message["error"] = update.error
        if finished and finished.usage:
            message["usage"] = finished.usage
        try:
            await store.append_turn(cid, [message])
        except InvalidId:  # the conversation was deleted while the answer streamed
            log.info("answer for %s not saved: the conversation is gone", cid)
        except HistoryUnavailable as exc:
            log.warning("answer for %s not saved: %s", cid, exc)
            if update.status == "complete":
                update.status = "incomplete"
            update.error = f"{exc} This answer was shown but not saved."

    async def _context(
        self,
        store: HistoryStore,
        cid: str,
        provider: Provider,
        model: str,
        system_prompt: str,
        detail: str,
    ) -> list[dict]:
        """System prompt + the last N messages, in the OpenAI chat format."""
        history = await store.get_messages(cid, limit=self.settings.history_context_messages)
        while history and history[0]["role"] == "assistant":
            history = history[1:]  # some providers insist the first message is the user's
        vision = provider.supports_vision(model)
        messages: list[dict] = [{"role": "system", "content": system_prompt}]
        for message in history:
            if message["role"] == "assistant":
                if message.get("content"):
                    messages.append({"role": "assistant", "content": message["content"]})
                continue
            messages.append(
                {
                    "role": "user",
                    "content": await self._user_content(
                        store, message, vision, provider.id, detail
                    ),
                }
            )
        return messages

    async def _user_content(
        self, store: HistoryStore, message: dict, vision: bool, provider_id: str, detail: str
    ) -> str | list[dict]:
        refs = message.get("images") or []
        if not refs:
            return message.get("content", "")
        parts: list[dict] = []
        if message.get("content"):
            parts.append({"type": "text", "text": message["content"]})
        for ref in refs:
            stored = await store.get_image(ref["sha256"]) if vision else None
            if stored is None:
                # Never send an image to a model that cannot see (DeepSeek fails every later
                # turn if it does); say in words that there was one.
                reason = "expired" if vision else "not shown to this model"
                parts.append({"type": "text", "text": f"[image {ref.get('name', '')}: {reason}]"})
                continue
            parts.append(image_part(*stored, provider_id=provider_id, detail=detail))
        return parts

    # -- conversations ------------------------------------------------------------------
    async def history(self, cid: str) -> list[dict]:
        store = await self.store()
        if not cid or not is_valid_id(cid):
            raise ChatError("That conversation id is not valid (32 hexadecimal characters).")
        return await store.get_messages(cid)

    async def display(self, cid: str) -> list[dict]:
        """The stored conversation as Chatbot messages (images written to local files)."""
        if not cid:
            return []
        shown: list[dict] = []
        for message in await self.history(cid):
            if message["role"] == "user":
                paths = [
                    p for ref in message.get("images") or [] if (p := await self.image_path(ref))
                ]
                shown += display_user(
                    message.get("content", ""), paths, message.get("receipts", ())
                )
            else:
                shown += display_answer(
                    message.get("content", ""),
                    message.get("reasoning", ""),
                    status=message.get("status", "complete"),
                    error=message.get("error"),
                )
        return shown

    async def image_path(self, ref: dict) -> str | None:
        """A local file for a stored image, so the Chatbot can show it after a reload."""
        sha = ref.get("sha256", "")
        ext = {"image/png": "png", "image/gif": "gif", "image/webp": "webp"}.get(
            ref.get("mime", ""), "jpg"
        )
        path = self.image_dir / f"{sha}.{ext}"
        if path.exists():
            return str(path)
        stored = await (await self.store()).get_image(sha)
        if stored is None:
            return None
        self.image_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        await asyncio.to_thread(tmp.write_bytes, stored[0])
        tmp.replace(path)
        return str(path)


def log_turn(update: TurnUpdate, images: int, started: float, first_token: float | None) -> None:
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
        "ttft_ms": round((first_token - started) * 1000) if first_token else None,
        "duration_ms": round((now - started) * 1000),
        "outcome": update.status if update.error != "Stopped." else "stopped",
    }
    log.info(json.dumps(record))


def image_ref(image: PreparedImage) -> dict:
    return {
        "sha256": image.sha256,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "name": image.name,
        "original_bytes": image.original_bytes,
        "original_width": image.original_width,
        "original_height": image.original_height,
    }


def image_part(data: bytes, mime: str, *, provider_id: str, detail: str) -> dict:
    import base64

    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    image_url: dict = {"url": url}
    # SiliconFlow reads a missing/auto detail as "low"; elsewhere auto is the provider default.
    if detail != "auto":
        image_url["detail"] = detail
    elif provider_id == "siliconflow":
        image_url["detail"] = "high"
    return {"type": "image_url", "image_url": image_url}


# -- how messages look in the Chatbot (plain dicts in Gradio's messages format) -------------
# Text goes in as {"type": "text"} parts: a plain string would pass through inspect.cleandoc,
# which strips indentation and breaks code blocks.
def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


STATUS_NOTES = {"incomplete": "⚠️ Incomplete", "error": "⚠️ Not answered"}


def display_answer(
    answer: str,
    reasoning: str = "",
    *,
    status: str = "complete",
    error: str | None = None,
    streaming: bool = False,
) -> list[dict]:
    """One assistant answer: a collapsible thought (reasoning), then the answer itself."""
    shown: list[dict] = []
    if reasoning:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(reasoning)],
                "metadata": {"title": "💭 Thinking", "status": "pending" if streaming else "done"},
            }
        )
    body = answer
    if error and status in STATUS_NOTES:
        note = f"**{STATUS_NOTES[status]}:** {error}"
        body = f"{answer}\n\n---\n{note}" if answer else note
    if body or not shown:
        shown.append({"role": "assistant", "content": [text_part(body or "…")]})
    return shown


def display_user(text: str, image_paths: Sequence[str], receipts: Sequence[str] = ()) -> list[dict]:
    content = [{"path": path} for path in image_paths]
    if text:
        content.insert(0, text_part(text))
    shown = [{"role": "user", "content": content or [text_part("")]}]
    if receipts:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part("\n".join(f"- {line}" for line in receipts))],
                "metadata": {"title": f"📎 Sent {len(receipts)} image(s)", "status": "done"},
            }
        )
    return shown
