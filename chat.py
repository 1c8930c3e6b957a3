"""One chat turn, free of any UI: load history -> build the request -> stream -> persist.

`app.py` wires Gradio to `ChatService`; the public API and the browser UI share this code, so
a turn behaves the same whichever way it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import RedisError

import importing
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings, load_prices, price_of
from history import HistoryStore, HistoryUnavailable, InvalidId, is_valid_id, parse_export
from images import (
    ACCEPTED_FORMATS,
    DETAILS,
    MAX_PIXELS,
    ImageRejected,
    PreparedImage,
    estimate_image_tokens,
    prepare_images,
    receipt_text,
)
from limits import RateLimited, RateLimiter, ip_key
from markup import MAX_MATH_TOTAL_CHARS, MathBudget, safe_markdown
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


class ChatRateLimited(ChatError):
    """Over the rate limit; `retry_after` whole seconds to wait (an HTTP API's Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Budget:
    """One budget of limits.RateLimiter: units per minute per client (a browser, or an API
    caller's address), per IP (not loopback) and for everyone together; 0 = off."""

    per_client: int
    per_ip: int
    per_global: int
    action: str  # "You are <action> too fast: wait N s"


_MB = 1024 * 1024
RUNNING_TTL_S = 120  # a "one at a time" mark outlives any run (a provider check: <= ~25 s)


def budgets(s: Settings) -> dict[str, Budget]:
    """Every budget a stranger can spend by the minute (docs/security.md lists them)."""
    return {
        # a message, a retry, a compare and an edit each count as one turn
        "turns": Budget(
            s.rate_limit_per_minute,
            s.rate_limit_per_ip_per_minute,
            s.rate_limit_global_per_minute,
            "sending messages",
        ),
        "imports": Budget(
            s.imports_per_minute, 3 * s.imports_per_minute, s.imports_global_per_minute, "importing"
        ),
        "checks": Budget(
            s.checks_per_minute,
            3 * s.checks_per_minute,
            s.checks_global_per_minute,
            "checking providers",
        ),
        # uploads carry no browser id: per address (not loopback) and global (uploads.py)
        "uploads": Budget(0, s.uploads_per_minute, s.uploads_global_per_minute, "uploading"),
        "upload_bytes": Budget(
            0,
            int(s.upload_mb_per_minute * _MB),
            int(s.upload_global_mb_per_minute * _MB),
            "uploading",
        ),
        "image_pixels": Budget(
            s.image_megapixels_per_minute * 1_000_000,
            3 * s.image_megapixels_per_minute * 1_000_000,
            s.image_megapixels_global_per_minute * 1_000_000,
            "sending large images",
        ),
    }


def megabytes(size: int) -> str:
    return f"{size / _MB:,.1f}" if size >= _MB else f"{size / _MB:.2f}"


def header_pixels(raw: bytes) -> int:
    """An image's declared width × height from its header (nothing decoded; 0 when it is
    not an accepted image), capped at images.MAX_PIXELS (larger ones are refused unread)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        return MAX_PIXELS
    except Exception:  # junk: prepare_images refuses it without decoding
        return 0
    return max(0, min(width * height, MAX_PIXELS))


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
    client_ip: str | None = None  # for the per-IP rate limit only; never stored
    temperature: float | None = None  # None: the provider's default
    max_tokens: int | None = None
    top_p: float | None = None
    # The user's own keys (bring your own key), by provider id: used for this turn only,
    # never stored or logged.
    api_keys: Mapping[str, str] = field(default_factory=dict)

    def api_key(self, provider_id: str) -> str | None:
        return (self.api_keys or {}).get(provider_id) or None

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p}


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
    error_code: str | None = None  # ProviderError.code when a provider failed (HTTP API)
    finished: Finished | None = field(default=None, repr=False)  # the provider's last event
    first_token_at: float | None = field(default=None, repr=False)  # time.monotonic()


@dataclass
class InputMessage:
    """One message of a client-sent conversation (HTTP API, stateless turns)."""

    role: str  # system | user | assistant
    text: str = ""
    images: Sequence[tuple[str, bytes]] = ()  # (name, raw bytes); user messages only


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
        # Truncated: the role may be an API caller's junk, and the message is shown and logged.
        raise ChatError(f"Unknown role {str(role)[:40]!r}. Pick one of: {known}.")
    return ROLES[role].prompt


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
        with contextlib.suppress(Exception):
            await events.aclose()


class ChatService:
    """Runs turns against a provider registry and a history store."""

    def __init__(self, settings: Settings, providers: Providers, image_dir: Path) -> None:
        self.settings = settings
        self.providers = providers
        self.image_dir = image_dir
        self.stream_interval = 0.05
        self.display_limit = 40  # stored messages shown in the Chatbot (see display_indexed)
        self._store: HistoryStore | None = None
        self._store_lock = asyncio.Lock()
        self._limiters: dict[str, RateLimiter] = {}

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

    # -- abuse limits (limits.py) --------------------------------------------------------
    async def check_rate(self, browser_id: str | None, client_ip: str | None) -> None:
        """Count one turn (a message, retry, compare or edit) against the per-browser/per-IP
        limits and the global ceiling, before anything is stored or sent; raises
        ChatRateLimited ("wait N s"). Fails open when Redis is unreachable (the history
        write that follows reports that). The HTTP API calls this too."""
        await self.check_budget("turns", browser_id, client_ip)

    async def check_budget(
        self, name: str, browser_id: str | None, client_ip: str | None, weight: int = 1
    ) -> str | None:
        """Count `weight` against the named budget (BUDGETS) or raise ChatRateLimited.
        Returns the hit's id for `forget_hit`."""
        try:
            limiter = await self.limiter(name)
        except HistoryUnavailable:
            return None
        try:
            return await limiter.hit(browser_id, client_ip, weight)
        except RateLimited as exc:
            log.info("rate limited (%s %s): wait %d s", name, exc.scope, exc.wait_seconds)
            raise ChatRateLimited(str(exc), exc.wait_seconds) from None

    async def forget_hit(
        self, name: str, hit: str | None, browser_id: str | None, client_ip: str | None
    ) -> None:
        if hit:
            await (await self.limiter(name)).forget(hit, browser_id, client_ip)

    async def limiter(self, name: str) -> RateLimiter:
        """The named budget's limiter, on the same Redis (or fakeredis) as the history."""
        if name not in self._limiters:
            store = await self.store()
            spec = budgets(self.settings)[name]
            self._limiters[name] = RateLimiter(
                store.redis,
                per_client=spec.per_client,
                per_ip=spec.per_ip,
                per_global=spec.per_global,
                prefix=f"{store.prefix}rate:" + (f"{name}:" if name != "turns" else ""),
                action=spec.action,
            )
        return self._limiters[name]

    @contextlib.asynccontextmanager
    async def one_at_a_time(
        self, name: str, browser_id: str | None, client_ip: str | None, busy: str
    ) -> AsyncIterator[None]:
        """Run the block only if this client (browser, else address) is not running `name`
        already, on any replica (a Redis key, SET NX, that expires by itself should the
        process die); ChatError(`busy`) otherwise. Fails open when Redis cannot answer."""
        who = browser_id or ip_key(client_ip)
        key = token = None
        if who:
            store = await self.store()
            key, token = f"{store.prefix}running:{name}:{who[:64]}", secrets.token_hex(8)
            try:
                if not await store.redis.set(key, token, nx=True, ex=RUNNING_TTL_S):
                    raise ChatError(busy)
            except (RedisError, OSError):
                key = None
        try:
            yield
        finally:
            if key:
                with contextlib.suppress(RedisError, OSError):
                    if await store.redis.get(key) == token.encode():
                        await store.redis.delete(key)

    async def check_storage(
        self, browser_id: str | None, client_ip: str | None, adding: int = 0
    ) -> None:
        """Refuse (ChatError) a write that would take this browser (or, for an API caller,
        its address) past MAX_STORED_MB_PER_BROWSER. Fails open when Redis cannot answer."""
        limit = self.settings.max_stored_bytes_per_browser
        address = ip_key(client_ip)
        if not limit or not (browser_id or address):
            return
        try:
            store = await self.store()
            if browser_id:
                used = await store.stored_bytes(browser_id)
            else:
                used = await store.api_stored_bytes(address)
        except (HistoryUnavailable, InvalidId):
            return
        if used + adding <= limit:
            return
        log.info("storage quota reached (%s)", "browser" if browser_id else "api")
        if browser_id:
            raise ChatError(
                f"This browser stores {megabytes(used)} MB of chats; the limit is "
                f"{megabytes(limit)} MB. Delete old conversations to free space."
            )
        raise ChatError(
            f"Conversations stored through the API from your address take {megabytes(used)} "
            f"MB; the limit is {megabytes(limit)} MB. They expire "
            f"{self.settings.history_ttl_days} days after your last one."
        )

    async def _charge_api(self, browser_id: str | None, client_ip: str | None, size: int) -> None:
        """An API caller's writes count against its address (API conversations have no
        browser); best effort."""
        address = ip_key(client_ip)
        if browser_id or not address or size <= 0:
            return
        with contextlib.suppress(HistoryUnavailable):
            await (await self.store()).charge_api_bytes(address, size)

    def output_tokens(self, max_tokens: int | None) -> int | None:
        """`max_tokens` as sent upstream: at most MAX_OUTPUT_TOKENS (None: the model's own
        default, which the model's limit bounds)."""
        if max_tokens is None:
            return None
        return max(1, min(int(max_tokens), self.settings.max_output_tokens))

    def _check_prompt(self, prompt: str) -> None:
        if len(prompt or "") > self.settings.max_message_chars:
            raise ChatError(
                f"The custom system prompt is {len(prompt):,} characters long; the limit is "
                f"{self.settings.max_message_chars:,}. Shorten it."
            )

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

    def _resolve(
        self, provider_id: str, model: str, api_keys: Mapping[str, str] | None = None
    ) -> tuple[Provider, str]:
        wanted = (provider_id or "").strip().lower()
        try:
            return self.providers.resolve(
                provider_id or "", model or "", api_key=(api_keys or {}).get(wanted)
            )
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

    async def _stored_messages(self, cid: str) -> tuple[HistoryStore, list[dict]]:
        """The store and the messages of an existing conversation (retry, edit, undo);
        Redis trouble becomes a ChatError the user can act on."""
        try:
            store = await self.store()
            await self._conversation_meta(store, cid)
            return store, await store.get_messages(cid)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None

    async def _prepare(
        self,
        paths: Sequence[str],
        provider: Provider,
        model: str,
        detail: str,
        who: tuple[str | None, str | None] = (None, None),
    ) -> list[PreparedImage]:
        """Uploaded files, read and prepared (see _prepare_items)."""
        items = []
        for path in paths:
            name = Path(path).name
            try:
                items.append((name, await asyncio.to_thread(Path(path).read_bytes)))
            except OSError:
                raise ChatError(f'"{name}" could not be read. Attach it again.') from None
        return await self._prepare_items(items, provider, model, detail, who)

    async def _prepare_items(
        self,
        items: list[tuple[str, bytes]],
        provider: Provider,
        model: str,
        detail: str,
        who: tuple[str | None, str | None] = (None, None),
    ) -> list[PreparedImage]:
        """(name, bytes) images validated and optimised for the model; ChatError if refused.
        `who` (browser id, client IP) pays for the decoding in the image_pixels budget."""
        if not items:
            return []
        if not provider.supports_vision(model):
            raise ChatError(
                f"{model} cannot see images. Pick a vision model (👁 in the model list) or "
                "remove the images and send again."
            )
        await self.charge_pixels(items, *who)
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

    async def charge_pixels(
        self, items: Sequence[tuple[str, bytes]], browser_id: str | None, client_ip: str | None
    ) -> None:
        """Decoding costs CPU by the pixel: count the images' declared sizes (their headers,
        read without decoding) against IMAGE_MEGAPIXELS_PER_MINUTE before any is decoded."""
        pixels = sum(header_pixels(raw) for _, raw in items)
        if pixels:
            await self.check_budget("image_pixels", browser_id, client_ip, pixels)

    # -- one turn -----------------------------------------------------------------------
    async def turn(self, req: TurnRequest) -> AsyncIterator[TurnUpdate]:
        """Validate, store the user's message, stream the answer, store the answer.

        Raises ChatError before anything is stored or sent; once the stream has started,
        failures end the turn with an update whose status is "error" or "incomplete" and whose
        `answer` keeps whatever arrived.
        """
        text = req.text or ""
        images = list(req.images or [])
        req.max_tokens = self.output_tokens(req.max_tokens)  # MAX_OUTPUT_TOKENS, stored so too
        self._check_limits(text, images)
        self._check_prompt(req.system_prompt)
        system_prompt = system_prompt_for(req.role, req.system_prompt)
        provider, model = self._resolve(req.provider, req.model, req.api_keys)
        detail = effective_detail(provider.id, req.detail)
        await self.check_rate(req.browser_id, req.client_ip)
        created = None  # a conversation made by this turn, removed again if the turn fails here
        try:
            store = await self.store()
            meta = await self._conversation_meta(store, req.conversation_id)
            prepared = await self._prepare(
                images, provider, model, detail, who=(req.browser_id, req.client_ip)
            )
            adding = len(text.encode()) + sum(len(image.data) for image in prepared)
            await self.check_storage(req.browser_id, req.client_ip, adding)
            cid = (
                meta["id"]
                if meta
                else (
                    created := await store.create_conversation(
                        req.browser_id,
                        title=conversation_title(text, len(prepared)),
                        role=req.role,
                        provider=provider.id,
                        model=model,
                    )
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
            # Meta first: once the message is stored nothing else may fail, or the user would
            # be told "not sent", send it again and see it twice.
            await store.update_meta(
                cid, role=req.role, provider=provider.id, model=model, **sampling_meta(req)
            )
            charged = await store.append_turn(
                cid,
                [user_message],
                {image.sha256: (image.data, image.mime) for image in prepared},
                browser_id=req.browser_id,
            )
            await self._charge_api(req.browser_id, req.client_ip, charged)
        except HistoryUnavailable as exc:
            if created:  # no empty conversation left behind (best effort: Redis is failing)
                with contextlib.suppress(HistoryUnavailable, InvalidId):
                    await store.delete_conversation(created)
            raise ChatError(f"{exc} Your message was not sent; send it again.") from None
        except InvalidId:  # deleted meanwhile, or not this browser's
            raise ChatError("That conversation is no longer available. Start a new chat.") from None
        answer = self._answer(
            store,
            cid,
            provider,
            model,
            system_prompt,
            detail,
            len(prepared),
            **req.sampling(),
            api_key=req.api_key(provider.id),
        )
        async for update in answer:
            update.receipts = user_message.get("receipts", [])
            yield update

    async def retry(
        self, req: TurnRequest, *, keep_previous: bool = False, rate_checked: bool = False
    ) -> AsyncIterator[TurnUpdate]:
        """Answer the last user message again, with the role and model now chosen.

        The previous answer is replaced, or kept beside the new one (`keep_previous`) so two
        models can be compared; only the newest answer goes on as context.
        """
        cid = req.conversation_id
        req.max_tokens = self.output_tokens(req.max_tokens)
        self._check_prompt(req.system_prompt)
        prompt = system_prompt_for(req.role, req.system_prompt)
        chosen, model_id = self._resolve(req.provider, req.model, req.api_keys)
        detail = effective_detail(chosen.id, req.detail)
        if not rate_checked:  # a retry costs a model call too
            await self.check_rate(req.browser_id, req.client_ip)
            await self.check_storage(req.browser_id, req.client_ip)
        store, messages = await self._stored_messages(cid)
        trailing = trailing_answers(messages)
        if trailing == len(messages):
            raise ChatError("There is no message to answer again yet.")
        last_user = messages[-1 - trailing]
        if last_user.get("images") and not chosen.supports_vision(model_id):
            raise ChatError(f"{model_id} cannot see images. Pick a vision model (marked 👁).")
        failed = trailing and messages[-1].get("status") == "error"
        try:
            if trailing and (not keep_previous or failed):
                await store.pop_messages(cid, 1 if keep_previous else trailing)
            await store.update_meta(cid, **sampling_meta(req))
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        images = len(last_user.get("images") or [])
        answer = self._answer(
            store,
            cid,
            chosen,
            model_id,
            prompt,
            detail,
            images,
            **req.sampling(),
            api_key=req.api_key(chosen.id),
        )
        async for update in answer:
            yield update

    async def edit(self, req: TurnRequest, index: int) -> AsyncIterator[TurnUpdate]:
        """Replace the user message at stored position `index` and answer again from there.

        What came after it is dropped; its images stay with it.
        """
        cid = req.conversation_id
        store, messages = await self._stored_messages(cid)
        if not 0 <= index < len(messages) or messages[index]["role"] != "user":
            raise ChatError("Only your own messages can be edited.")
        self._check_limits(req.text or "", messages[index].get("images") or [])
        self._check_prompt(req.system_prompt)
        self._resolve(req.provider, req.model, req.api_keys)
        # Refused before anything changes: a rate-limited edit keeps the conversation as it was.
        await self.check_rate(req.browser_id, req.client_ip)
        await self.check_storage(req.browser_id, req.client_ip, len((req.text or "").encode()))
        edited = {**messages[index], "content": req.text or "", "edited": time.time()}
        try:
            await store.pop_messages(cid, len(messages) - index)
            await store.append_turn(cid, [edited])
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        retry = TurnRequest(**{**req.__dict__, "conversation_id": cid})
        async for update in self.retry(retry, rate_checked=True):
            yield update

    async def undo(self, cid: str) -> dict | None:
        """Remove the last user message and its answers; return that user message."""
        store, messages = await self._stored_messages(cid)
        count = trailing_answers(messages)
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
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        api_key: str | None = None,
    ) -> AsyncIterator[TurnUpdate]:
        update = TurnUpdate(conversation_id=cid, provider=provider.id, model=model)
        messages: list[dict] = []
        image_tokens: int | None = None
        started = time.monotonic()
        try:
            messages, image_tokens = await self._context(
                store, cid, provider, model, system_prompt, detail
            )
            yield update
            events = self.providers.stream(
                provider.id,
                model,
                messages,
                temperature=temperature,
                max_tokens=self.output_tokens(max_tokens),
                top_p=top_p,
                api_key=api_key,
            )
            async for streamed in self._stream_answer(update, events):
                yield streamed
        except ProviderError as exc:
            update.status = "incomplete" if update.answer else "error"
            update.error = str(exc)
            update.error_code = exc.code
        except HistoryUnavailable as exc:
            update.status = "error"
            update.error = f"{exc} Press Retry when it is back."
        except (asyncio.CancelledError, GeneratorExit):
            update.status = "incomplete"
            update.error = "Stopped."
            raise
        finally:
            # Shielded: a Stop cancels this task, but the partial answer must still be saved.
            update.usage = usage_of(update.finished, messages, update, image_tokens)
            await asyncio.shield(self._save_answer(store, cid, update))
            log_turn(update, image_count, started)
        update.done = True
        yield update

    async def _stream_answer(
        self, update: TurnUpdate, events: AsyncIterator[StreamEvent]
    ) -> AsyncIterator[TurnUpdate]:
        """Fill `update` from the provider's events at the coalesced pace, then mark it
        complete (or incomplete at the length limit). Provider errors propagate."""
        async for batch in coalesce(events, self.stream_interval):
            update.first_token_at = update.first_token_at or time.monotonic()
            for event in batch:
                if isinstance(event, ContentDelta):
                    update.answer += event.text
                elif isinstance(event, ReasoningDelta):
                    update.reasoning += event.text
                elif isinstance(event, Finished):
                    update.finished = event
            yield update
        update.status = "complete"
        if update.finished and update.finished.reason == "length":
            update.status = "incomplete"
            update.error = "The answer hit the model's length limit. Ask it to continue."

    async def _save_answer(self, store: HistoryStore, cid: str, update: TurnUpdate) -> None:
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
        if update.usage:
            message["usage"] = update.usage
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
    ) -> tuple[list[dict], int | None]:
        """System prompt + the last N messages in the OpenAI chat format, and the estimated
        image tokens among them (None when the model's rule is unknown)."""
        history = await store.get_messages(cid, limit=self.settings.history_context_messages)
        while history and history[0]["role"] == "assistant":
            history = history[1:]  # some providers insist the first message is the user's
        vision = provider.supports_vision(model)
        messages: list[dict] = [{"role": "system", "content": system_prompt}]
        image_tokens: int | None = 0
        for position, message in enumerate(history):
            if message["role"] == "assistant":
                # Of answers side by side (regenerated to compare), only the newest goes on.
                later = history[position + 1 :]
                if message.get("content") and not (later and later[0]["role"] == "assistant"):
                    messages.append({"role": "assistant", "content": message["content"]})
                continue
            if vision:
                for ref in message.get("images") or []:
                    tokens = estimate_image_tokens(
                        ref.get("width", 0), ref.get("height", 0), provider.id, model, detail
                    )
                    if tokens is None or image_tokens is None:
                        image_tokens = None
                    else:
                        image_tokens += tokens
            messages.append(
                {
                    "role": "user",
                    "content": await self._user_content(store, message, vision, detail),
                }
            )
        return messages, image_tokens

    async def _user_content(
        self, store: HistoryStore, message: dict, vision: bool, detail: str
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
            parts.append(image_part(*stored, detail=detail))
        return parts

    # -- a stateless turn: the client sends the whole conversation (HTTP API) ------------
    async def stream_messages(
        self,
        messages: Sequence[InputMessage],
        *,
        role: str = DEFAULT_ROLE,
        provider: str = "",
        model: str = "",
        detail: str = "auto",
        temperature: float | None = None,
        max_tokens: int | None = None,
        client_ip: str | None = None,
    ) -> AsyncIterator[TurnUpdate]:
        """Answer `messages` without storing anything.

        Raises ChatError (ChatRateLimited when over the per-IP limit) before the first update,
        and nothing has been sent upstream until the first update was taken. The client's
        system messages win over `role`; like a stored conversation, only the last
        HISTORY_CONTEXT_MESSAGES others reach the model.
        """
        if not messages or messages[-1].role != "user":
            raise ChatError('The last message must be the user\'s (role "user").')
        for message in messages:
            if message.role == "user":
                self._check_limits(message.text, message.images)
        system = "\n\n".join(m.text for m in messages if m.role == "system" and m.text.strip())
        self._check_prompt(system)
        prompt = system_prompt_for(role, system)
        chosen, model_id = self._resolve(provider, model)
        await self.check_rate(None, client_ip)
        detail = effective_detail(chosen.id, detail)
        limit = self.settings.history_context_messages
        recent = [m for m in messages if m.role != "system"][-limit:]
        while recent[0].role == "assistant":  # the last one is the user's, so this ends
            recent = recent[1:]
        upstream = [{"role": "system", "content": prompt}]
        upstream += await self._stateless_context(
            recent, chosen, model_id, detail, who=(None, client_ip)
        )
        image_count = sum(len(m.images) for m in recent)
        update = TurnUpdate(conversation_id="", provider=chosen.id, model=model_id)
        started = time.monotonic()
        try:
            yield update
            events = self.providers.stream(
                chosen.id,
                model_id,
                upstream,
                temperature=temperature,
                max_tokens=self.output_tokens(max_tokens),
            )
            async for streamed in self._stream_answer(update, events):
                yield streamed
        except ProviderError as exc:
            update.status = "incomplete" if update.answer else "error"
            update.error, update.error_code = str(exc), exc.code
        except (asyncio.CancelledError, GeneratorExit):
            update.status, update.error = "incomplete", "Stopped."
            raise
        finally:
            update.usage = update.finished.usage if update.finished else None
            log_turn(update, image_count, started)
        update.done = True
        yield update

    async def _stateless_context(
        self,
        recent: Sequence[InputMessage],
        provider: Provider,
        model: str,
        detail: str,
        who: tuple[str | None, str | None] = (None, None),
    ) -> list[dict]:
        """The client's messages in the OpenAI format, images validated and optimised."""
        items = [(name, raw) for m in recent for name, raw in m.images]
        prepared = await self._prepare_items(items, provider, model, detail, who)
        parts_of = (image_part(i.data, i.mime, detail=detail) for i in prepared)
        out: list[dict] = []
        for message in recent:
            if not message.images:
                out.append({"role": message.role, "content": message.text})
                continue
            parts = [text_part(message.text)] if message.text else []
            parts += itertools.islice(parts_of, len(message.images))
            out.append({"role": message.role, "content": parts})
        return out

    # -- conversations ------------------------------------------------------------------
    async def import_conversation(
        self, data: str | object, browser_id: str | None, client_ip: str | None
    ) -> str:
        """A JSON export (its text, or already parsed) as a new conversation of `browser_id`
        (None: an API caller, counted by its address); returns its id.

        Counted in the imports budget first (junk too), before any text is parsed;
        ValueError says what is wrong with the data; ChatError for a budget or the storage
        quota. Messages are bounded like typed ones (importing.py); each image goes through
        the image pipeline as an upload does, and one that is not an image is left out with
        a note in its message.
        """
        await self.check_budget("imports", browser_id, client_ip)
        if isinstance(data, str):  # megabytes with images: parsed off the event loop
            data = await asyncio.to_thread(importing.parse_json, data)
        meta, messages, blobs = parse_export(data)
        messages = messages[-self.settings.history_max_messages :]
        messages = importing.bound_messages(
            messages,
            max_chars=self.settings.max_message_chars,
            max_images=self.settings.max_images_per_message,
        )
        items = importing.image_items(messages, blobs)
        prepared, dropped = {}, {}
        if items:
            await self.charge_pixels([(n, raw) for _, n, raw in items], browser_id, client_ip)
            results = await asyncio.gather(
                *(
                    prepare_images(
                        [(name, raw)],
                        max_bytes=self.settings.max_image_bytes,
                        provider_id=meta.get("provider", ""),
                        model=meta.get("model", ""),
                    )
                    for _, name, raw in items
                ),
                return_exceptions=True,
            )
            for (sha, _, _), result in zip(items, results, strict=True):
                if isinstance(result, ImageRejected):
                    dropped[sha] = result.reason
                elif isinstance(result, BaseException):
                    raise result
                else:
                    prepared[sha] = result[0]
        messages = importing.apply_prepared(messages, prepared, dropped)
        images = {i.sha256: (i.data, i.mime) for i in prepared.values()}
        adding = len(json.dumps(messages, ensure_ascii=False).encode())
        adding += sum(len(data) for data, _ in images.values())
        await self.check_storage(browser_id, client_ip, adding)
        store = await self.store()
        cid, charged = await store.import_parsed(
            importing.bound_meta(meta), messages, images, browser_id
        )
        await self._charge_api(browser_id, client_ip, charged)
        return cid

    async def history(self, cid: str) -> list[dict]:
        store = await self.store()
        if not cid or not is_valid_id(cid):
            raise ChatError("That conversation id is not valid (32 hexadecimal characters).")
        return await store.get_messages(cid)

    async def display(self, cid: str, messages: list[dict] | None = None) -> list[dict]:
        """The stored conversation as Chatbot messages (images written to local files);
        `messages`: its history, when the caller has just loaded it."""
        return (await self.display_indexed(cid, messages))[0]

    async def display_indexed(
        self, cid: str, messages: list[dict] | None = None
    ) -> tuple[list[dict], list[int]]:
        """Chatbot messages, and for each one the position of the stored message it shows
        (a stored message may show as several: thinking, answer, usage, image receipt).

        Only the last `display_limit` stored messages are shown, after a note (position -1):
        Gradio postprocesses and diffs the whole Chatbot value on every streamed update, so
        its cost grows with the chat (0.2 ms empty, 2.1 ms at 200 messages); capped, a long
        conversation streams as cheaply as a 40-message one. Export still has everything."""
        if not cid:
            return [], []
        shown: list[dict] = []
        positions: list[int] = []
        if messages is None:
            messages = await self.history(cid)
        start = max(0, len(messages) - self.display_limit)
        if start:
            shown.append(earlier_note(start))
            positions.append(-1)
        # Formulas cost the reader's tab: the newest messages keep theirs, older ones past
        # the view's budget show them as code (markup.MathBudget).
        math = MathBudget()
        budgets = [
            math.spend(message.get("content", ""), message.get("reasoning", ""))
            for message in reversed(messages[start:])
        ][::-1]
        for (position, message), budget in zip(
            enumerate(messages[start:], start), budgets, strict=True
        ):
            if message["role"] == "user":
                paths = [
                    p for ref in message.get("images") or [] if (p := await self.image_path(ref))
                ]
                parts = display_user(
                    message.get("content", ""), paths, message.get("receipts", ()), budget
                )
            else:
                parts = display_answer(
                    message.get("content", ""),
                    message.get("reasoning", ""),
                    status=message.get("status", "complete"),
                    error=message.get("error"),
                    usage=message.get("usage"),
                    math_budget=budget,
                )
            shown += parts
            positions += [position] * len(parts)
        return shown, positions

    async def image_path(self, ref: dict) -> str | None:
        """A local file for a stored image, so the Chatbot can show it after a reload."""
        sha = ref.get("sha256", "") if isinstance(ref, dict) else ""
        if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef")):
            return None  # a tampered reference ("../..") must not name a file outside the store
        ext = {"image/png": "png", "image/gif": "gif", "image/webp": "webp"}.get(
            ref.get("mime", ""), "jpg"
        )
        path = self.image_dir / f"{sha}.{ext}"
        if path.exists():
            # Shown again: no longer "old" for the upload dir's cleanup (uploads.py, Gradio's
            # delete_cache go by age), which deletes it only when nobody displayed it lately.
            with contextlib.suppress(OSError):
                os.utime(path)
            return str(path)
        stored = await (await self.store()).get_image(sha)
        if stored is None:
            return None
        self.image_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        await asyncio.to_thread(tmp.write_bytes, stored[0])
        tmp.replace(path)
        return str(path)


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
        "outcome": update.status if update.error != "Stopped." else "stopped",
    }
    log.info(json.dumps(record))


def trailing_answers(messages: Sequence[dict]) -> int:
    """How many assistant messages end the conversation (after its last user message)."""
    count = 0
    while count < len(messages) and messages[-1 - count]["role"] == "assistant":
        count += 1
    return count


def sampling_meta(req: TurnRequest) -> dict[str, str]:
    """Generation settings as conversation metadata ("" = the provider's default)."""
    return {name: "" if value is None else str(value) for name, value in req.sampling().items()}


def estimate_text_tokens(text: str) -> int:
    """A rough count when the provider reports none: ~4 characters a token, CJK ~1 each."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
    return cjk + max(0, len(text) - cjk + 3) // 4


def usage_of(
    finished: Finished | None,
    messages: list[dict],
    update: TurnUpdate,
    image_tokens: int | None,
) -> dict:
    """Tokens of one reply: the provider's count where it gave one, else an estimate."""
    prompt_text = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else [{"text": content or ""}]:
            if part.get("type") != "image_url":
                prompt_text.append(part.get("text") or "")
    reported = (finished.usage or {}) if finished else {}
    usage = {
        "prompt_tokens": reported.get("prompt_tokens"),
        "completion_tokens": reported.get("completion_tokens"),
        "image_tokens": image_tokens or None,
        "estimated": not reported,
    }
    if not reported:
        usage["prompt_tokens"] = estimate_text_tokens("".join(prompt_text)) + (image_tokens or 0)
        usage["completion_tokens"] = estimate_text_tokens(update.answer + update.reasoning)
    usage["total_tokens"] = (usage["prompt_tokens"] or 0) + (usage["completion_tokens"] or 0)
    price = price_of(update.model)
    if price:
        usage["cost"] = round(
            (usage["prompt_tokens"] * price.input + usage["completion_tokens"] * price.output)
            / 1_000_000,
            6,
        )
        usage["currency"] = price.currency
    return usage


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


def effective_detail(provider_id: str, detail: str) -> str:
    """The detail level images are prepared and sent with.

    SiliconFlow reads "auto" (or no detail) as "low", 448 px, too small for screenshots: there
    auto means high, both for the size images.py prepares and for the detail sent.
    """
    detail = detail if detail in DETAILS else "auto"
    return "high" if detail == "auto" and provider_id == "siliconflow" else detail


def image_part(data: bytes, mime: str, *, detail: str) -> dict:
    """An OpenAI-style image part; `detail` is sent only when it is not the default."""
    import base64

    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    image_url: dict = {"url": url}
    if detail != "auto":
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


# -- how messages look in the Chatbot (plain dicts in Gradio's messages format) -------------
# Text goes in as {"type": "text"} parts: a plain string would pass through inspect.cleandoc,
# which strips indentation and breaks code blocks.
def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def earlier_note(hidden: int) -> dict:
    """The first line of a long conversation's Chatbot: how many messages are not shown."""
    return {
        "role": "assistant",
        "content": [
            text_part(
                "To stay fast, the chat shows the latest messages only. All of them are "
                "kept: export the conversation to read the earlier ones."
            )
        ],
        "metadata": {"title": f"⋯ {hidden} earlier messages", "status": "done"},
    }


STATUS_NOTES = {"incomplete": "⚠️ Incomplete", "error": "⚠️ Not answered"}


def display_answer(
    answer: str,
    reasoning: str = "",
    *,
    status: str = "complete",
    error: str | None = None,
    streaming: bool = False,
    usage: dict | None = None,
    math_budget: int = MAX_MATH_TOTAL_CHARS,
) -> list[dict]:
    """One assistant answer: a collapsible thought (reasoning), the answer, its usage.
    `math_budget`: formula characters it may have rendered (markup.MathBudget)."""
    shown: list[dict] = []
    if reasoning:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(safe_markdown(reasoning, math_budget))],
                "metadata": {"title": "💭 Thinking", "status": "pending" if streaming else "done"},
            }
        )
    body = answer
    if error and status in STATUS_NOTES:
        note = f"**{STATUS_NOTES[status]}:** {error}"
        body = f"{body.rstrip()}\n\n---\n{note}" if answer.strip() else note
    # Model output and error text are untrusted: rendered harmlessly as a whole (markup.py).
    body = safe_markdown(body, math_budget)
    if body or not shown:
        shown.append({"role": "assistant", "content": [text_part(body or "…")]})
    if usage and not streaming:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(usage_details(usage))],
                "metadata": {"title": f"📊 {usage_summary(usage)}", "status": "done"},
            }
        )
    return shown


CURRENCY_SIGNS = {"USD": "$", "CNY": "¥", "EUR": "€"}


def format_cost(amount: float, currency: str) -> str:
    sign = CURRENCY_SIGNS.get(currency, f"{currency} ")
    return f"{sign}{amount:.4f}" if amount < 1 else f"{sign}{amount:,.2f}"


def usage_summary(usage: dict) -> str:
    """One short line: tokens in/out and the cost, '~' where it is an estimate."""
    approx = "~" if usage.get("estimated") else ""
    line = (
        f"{approx}{usage.get('prompt_tokens') or 0:,} in · "
        f"{approx}{usage.get('completion_tokens') or 0:,} out"
    )
    if "cost" in usage:
        cost = usage["cost"]
        line += f" · ≈ {format_cost(cost, usage.get('currency', 'USD'))}" if cost else " · free"
    return line


def usage_details(usage: dict) -> str:
    as_of, _ = load_prices()
    images = usage.get("image_tokens")
    rows = [
        f"- prompt tokens: {usage.get('prompt_tokens') or 0:,}",
        f"- completion tokens: {usage.get('completion_tokens') or 0:,}",
        f"- of which image tokens: ~{images:,}" if images else "- image tokens: none or unknown",
    ]
    if usage.get("estimated"):
        rows.append("- the provider reported no usage: counts are estimates (~4 characters/token)")
    if "cost" in usage:
        rows.append(f"- cost estimate from the price table of {as_of} (prices.json)")
    else:
        rows.append("- no price known for this model (add it to prices.json)")
    return "\n".join(rows)


def conversation_usage(messages: Sequence[dict]) -> str:
    """The summed usage of a conversation's answers, as one line (empty when none)."""
    answers = [m["usage"] for m in messages if m.get("role") == "assistant" and m.get("usage")]
    if not answers:
        return ""
    tokens = sum(u.get("total_tokens") or 0 for u in answers)
    estimated = any(u.get("estimated") for u in answers)
    line = f"{len(answers)} replies · {'~' if estimated else ''}{tokens:,} tokens"
    costs: dict[str, float] = {}
    for u in answers:
        if "cost" in u:
            costs[u.get("currency", "USD")] = costs.get(u.get("currency", "USD"), 0) + u["cost"]
    if costs:
        line += " · ≈ " + " + ".join(format_cost(v, k) for k, v in costs.items())
    return line


def display_user(
    text: str,
    image_paths: Sequence[str],
    receipts: Sequence[str] = (),
    math_budget: int = MAX_MATH_TOTAL_CHARS,
) -> list[dict]:
    content = [{"path": path} for path in image_paths]
    if text:  # the user's own text (or an imported one) is as untrusted as a model's
        content.insert(0, text_part(safe_markdown(text, math_budget)))
    shown = [{"role": "user", "content": content or [text_part("")]}]
    if receipts:
        lines = "\n".join(f"- {line}" for line in receipts)  # image names come from the client
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(safe_markdown(lines))],
                "metadata": {"title": f"📎 Sent {len(receipts)} image(s)", "status": "done"},
            }
        )
    return shown
