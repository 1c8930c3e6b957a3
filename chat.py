"""One chat turn, free of any UI: read the conversation once -> store the message -> build the
request -> stream -> save; and retry, edit, undo, open, import, the same way.

The UI and the public API share this code, so a turn behaves the same whichever way it
arrives. Its parts: chat_types (requests, update snapshots), chat_context (the upstream
request), chat_stream (the one stream-and-finish path), chat_images, chat_view (Chatbot
dicts), usage (tokens, cost), chat_budgets (rate limits, quotas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import conversation_import
from chat_budgets import ChatBudgets, header_pixels
from chat_checks import check_message, check_vision, plan_for
from chat_context import (
    Context,
    InputMessage,
    image_part,
    stateless_context,
    stateless_window,
    stored_context,
)
from chat_errors import ChatError, ChatRateLimited
from chat_images import ChatImages, user_message
from chat_stream import Saver, answer_message, stream_and_finish
from chat_types import Opened, Plan, Status, TurnRequest, TurnUpdate, Undone
from chat_view import first_shown, render_indexed
from config import DEFAULT_ROLE, Settings
from history import HistoryStore, HistoryUnavailable, InvalidId, is_valid_id
from markup_text import unshown
from providers import Providers
from rate_limits import Hit

# Importable from here: the turn's public names, wherever they are defined (check.py and
# tests/test_bounds.py import image_part and header_pixels from chat).
__all__ = [
    "ChatError",
    "ChatRateLimited",
    "ChatService",
    "InputMessage",
    "Opened",
    "Status",
    "TurnRequest",
    "TurnUpdate",
    "Undone",
    "conversation_title",
    "header_pixels",
    "image_part",
]

log = logging.getLogger("chat")

TITLE_CHARS = 48


def conversation_title(text: str, image_count: int) -> str:
    words = " ".join(text.split())
    if not words:
        return (
            "Image" if image_count == 1 else f"{image_count} images" if image_count else "New chat"
        )
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1].rstrip() + "…"


class ChatService:
    """Runs turns against a provider registry and a history store."""

    def __init__(self, settings: Settings, providers: Providers, image_dir: Path) -> None:
        self.settings = settings
        self.providers = providers
        self.stream_interval = 0.05
        self.display_limit = 40  # stored messages shown in the Chatbot (chat_view)
        self._store: HistoryStore | None = None
        self._store_lock = asyncio.Lock()
        self.budgets = ChatBudgets(settings, self.store)
        self.images = ChatImages(settings, self.budgets, self.store, image_dir)

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

    # -- abuse limits (chat_budgets.py) -------------------------------------------------
    async def check_rate(self, browser_id: str | None, client_ip: str | None) -> None:
        """Count one turn (a message, retry, compare or edit) before anything is stored or
        sent; raises ChatRateLimited ("wait N s")."""
        await self.budgets.check("turns", browser_id, client_ip)

    async def check_budget(
        self, name: str, browser_id: str | None, client_ip: str | None, weight: int = 1
    ) -> Hit | None:
        """Count `weight` against the named budget or raise ChatRateLimited; what it counted."""
        return await self.budgets.check(name, browser_id, client_ip, weight)

    async def forget_hit(self, name: str, hit: Hit | None) -> None:
        """Take back what `check_budget` counted (the hit knows its limits)."""
        await self.budgets.forget(name, hit)

    def one_at_a_time(
        self, name: str, browser_id: str | None, client_ip: str | None, busy: str
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Run a block only if this client is not running `name` already (ChatError(busy))."""
        return self.budgets.one_at_a_time(name, browser_id, client_ip, busy)

    async def _meta(self, store: HistoryStore, cid: str) -> dict:
        try:
            meta = await store.get_meta(cid)
        except InvalidId:
            raise ChatError("That conversation id is not valid. Start a new chat.") from None
        if meta is None:
            raise ChatError(
                "That conversation no longer exists (it may have expired). Start a new chat."
            )
        return meta

    async def _read(self, cid: str) -> tuple[HistoryStore, list[dict]]:
        """The store and all messages of an existing conversation, read once (retry, edit,
        undo); Redis trouble becomes a ChatError the user can act on."""
        try:
            store = await self.store()
            await self._meta(store, cid)
            return store, await store.get_messages(cid)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None

    # -- turns ----------------------------------------------------------------------------
    async def turn(self, req: TurnRequest) -> AsyncGenerator[TurnUpdate, None]:
        """Validate, store the user's message, stream the answer, store the answer.

        Raises ChatError before anything is stored or sent; once the stream has started,
        failures end the turn with an update whose status is "error" or "incomplete" and whose
        `answer` keeps whatever arrived.
        """
        text, images = req.text or "", list(req.images or [])
        check_message(self.settings, text, len(images))
        plan = plan_for(self.settings, self.providers, req)
        who = (req.browser_id, req.client_ip)
        await self.check_rate(*who)
        created = None  # a conversation made by this turn, removed again if the turn fails here
        try:
            store = await self.store()
            cid, earlier = req.conversation_id, []
            if cid:
                await self._meta(store, cid)
                earlier = await store.get_messages(cid)
            prepared = await self.images.prepare_files(images, plan, who)
            adding = len(text.encode()) + sum(len(image.data) for image in prepared)
            await self.budgets.check_storage(*who, adding)
            if not cid:
                cid = created = await store.create_conversation(
                    req.browser_id,
                    title=conversation_title(text, len(prepared)),
                    role=req.role,
                    provider=plan.provider.id,
                    model=plan.model,
                )
            message = user_message(text, prepared, plan)
            # Meta first: once the message is stored nothing else may fail, or the user would
            # be told "not sent", send it again and see it twice.
            meta = {"role": req.role, "provider": plan.provider.id, "model": plan.model}
            await store.update_meta(cid, **meta, **sampling_meta(plan.sampling))
            charged = await store.append_turn(
                cid,
                [message],
                {image.sha256: (image.data, image.mime) for image in prepared},
                browser_id=req.browser_id,
            )
            await self.budgets.charge_api(*who, charged)
        except HistoryUnavailable as exc:
            if created:  # no empty conversation left behind (best effort: Redis is failing)
                with contextlib.suppress(HistoryUnavailable, InvalidId):
                    await store.delete_conversation(created)
            raise ChatError(f"{exc} Your message was not sent; send it again.") from None
        except InvalidId:  # deleted meanwhile, or not this browser's
            raise ChatError("That conversation is no longer available. Start a new chat.") from None
        receipts = tuple(message.get("receipts", ()))
        answer = self._answer(store, cid, [*earlier, message], plan, len(prepared), receipts)
        async with contextlib.aclosing(answer) as updates:
            async for update in updates:
                yield update

    async def retry(
        self, req: TurnRequest, *, keep_previous: bool = False
    ) -> AsyncGenerator[TurnUpdate, None]:
        """Answer the last user message again, with the role and model now chosen.

        The previous answer is replaced, or kept beside the new one (`keep_previous`) so two
        models can be compared; only the newest answer goes on as context.
        """
        cid = req.conversation_id
        plan = plan_for(self.settings, self.providers, req)
        # A retry costs a model call too.
        await self.check_rate(req.browser_id, req.client_ip)
        await self.budgets.check_storage(req.browser_id, req.client_ip)
        store, messages = await self._read(cid)
        trailing = trailing_answers(messages)
        if trailing == len(messages):
            raise ChatError("There is no message to answer again yet.")
        last_user = messages[-1 - trailing]
        check_vision(last_user, plan)
        failed = trailing and messages[-1].get("status") == Status.ERROR
        drop = 0  # a failed answer is never kept to compare with
        if trailing and (not keep_previous or failed):
            drop = 1 if keep_previous else trailing
        try:
            await store.pop_messages(cid, drop)
            await store.update_meta(cid, **sampling_meta(plan.sampling))
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        stored = messages[: len(messages) - drop]
        answer = self._answer(store, cid, stored, plan, len(last_user.get("images") or []))
        async with contextlib.aclosing(answer) as updates:
            async for update in updates:
                yield update

    async def edit_shown(
        self, req: TurnRequest, shown_index: int
    ) -> AsyncGenerator[TurnUpdate, None]:
        """Replace a user message and answer again from there; what came after it is dropped,
        its images stay. `shown_index` is the Chatbot's (as `display_indexed` shows the
        conversation), `req.text` what the edit box gave (markup_text's marks taken out)."""
        store, messages = await self._read(req.conversation_id)
        _, positions = render_indexed(messages, {}, self.display_limit)
        position = positions[shown_index] if 0 <= shown_index < len(positions) else -1
        if position < 0 or messages[position]["role"] != "user":
            raise ChatError("Only your own messages can be edited.")
        original = messages[position].get("content")
        text = unshown(req.text or "", original if isinstance(original, str) else "")
        edited = self._edit(replace(req, text=text), position, store, messages)
        async with contextlib.aclosing(edited) as updates:
            async for update in updates:
                yield update

    async def _edit(
        self, req: TurnRequest, index: int, store: HistoryStore, messages: list[dict]
    ) -> AsyncGenerator[TurnUpdate, None]:
        cid, text = req.conversation_id, req.text or ""
        if not 0 <= index < len(messages) or messages[index]["role"] != "user":
            raise ChatError("Only your own messages can be edited.")
        check_message(self.settings, text, len(messages[index].get("images") or []))
        plan = plan_for(self.settings, self.providers, req)
        check_vision(messages[index], plan)
        # Refused before anything changes: a rate-limited edit keeps the conversation as it was.
        await self.check_rate(req.browser_id, req.client_ip)
        await self.budgets.check_storage(req.browser_id, req.client_ip, len(text.encode()))
        edited = {**messages[index], "content": text, "edited": time.time()}
        try:
            await store.pop_messages(cid, len(messages) - index)
            await store.append_turn(cid, [edited])
            await store.update_meta(cid, **sampling_meta(plan.sampling))
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        stored = [*messages[:index], edited]
        answer = self._answer(store, cid, stored, plan, len(edited.get("images") or []))
        async with contextlib.aclosing(answer) as updates:
            async for update in updates:
                yield update

    async def undo_last(self, cid: str) -> Undone | None:
        """Remove the last user message and its answers: its text and images (local files),
        and the conversation left; None when there is nothing to undo."""
        undone = await self._undo(cid)
        if undone is None:
            return None
        message, left = undone
        refs = message.get("images") or []
        paths = [path for ref in refs if (path := await self.images.path(ref))]
        return Undone(message.get("content", ""), paths, left)

    async def _undo(self, cid: str) -> tuple[dict, tuple[dict, ...]] | None:
        store, messages = await self._read(cid)
        count = trailing_answers(messages)
        if count == len(messages):
            return None
        removed = await store.pop_messages(cid, count + 1)
        if not removed:
            return None
        return removed[0], tuple(messages[: len(messages) - count - 1])

    def _answer(
        self,
        store: HistoryStore,
        cid: str,
        stored: list[dict],
        plan: Plan,
        image_count: int,
        receipts: tuple[str, ...] = (),
    ) -> AsyncGenerator[TurnUpdate, None]:
        """The answer to a stored conversation (`stored`: all of it, as it is now), built
        from its tail and saved at the end; no further read of the conversation."""
        keep = self.settings.history_max_messages  # the store trims to these, newest last
        first = TurnUpdate(
            conversation_id=cid,
            provider=plan.provider.id,
            model=plan.model,
            receipts=receipts,
            messages=tuple(stored[-keep:]),
        )

        def context() -> Awaitable[Context]:
            return stored_context(
                store,
                stored,
                limit=self.settings.history_context_messages,
                provider=plan.provider,
                model=plan.model,
                system_prompt=plan.system_prompt,
                detail=plan.detail,
            )

        async def save(update: TurnUpdate) -> TurnUpdate:
            message = answer_message(update)
            try:
                await store.append_turn(cid, [message])
            except InvalidId:  # the conversation was deleted while the answer streamed
                log.info("answer for %s not saved: the conversation is gone", cid)
                return replace(update, messages=None)
            except HistoryUnavailable as exc:
                log.warning("answer for %s not saved: %s", cid, exc)
                status = Status.INCOMPLETE if update.status == Status.COMPLETE else update.status
                error = f"{exc} This answer was shown but not saved."
                return replace(update, status=status, error=error, messages=None)
            return replace(update, messages=tuple([*stored, message][-keep:]))

        return self._stream(first, context, plan, image_count, save)

    def _stream(
        self,
        first: TurnUpdate,
        context: Callable[[], Awaitable[Context]],
        plan: Plan,
        image_count: int,
        save: Saver | None = None,
    ) -> AsyncGenerator[TurnUpdate, None]:
        """chat_stream.stream_and_finish with this service's providers and pace."""
        pace = self.stream_interval
        return stream_and_finish(
            self.providers, first, context, plan, interval=pace, image_count=image_count, save=save
        )

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
    ) -> AsyncGenerator[TurnUpdate, None]:
        """Answer `messages` without storing anything, on the stored turn's path.

        Raises ChatError (ChatRateLimited when over the per-IP limit) before the first update,
        and nothing has been sent upstream until the first update was taken. The client's
        system messages win over `role`; like a stored conversation, only the last
        HISTORY_CONTEXT_MESSAGES others reach the model.
        """
        if not messages or messages[-1].role != "user":
            raise ChatError('The last message must be the user\'s (role "user").')
        for message in messages:
            if message.role == "user":
                check_message(self.settings, message.text, len(message.images))
        system = "\n\n".join(m.text for m in messages if m.role == "system" and m.text.strip())
        settings = TurnRequest(
            role=role,
            system_prompt=system,
            provider=provider,
            model=model,
            detail=detail,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        plan = plan_for(self.settings, self.providers, settings)
        await self.check_rate(None, client_ip)
        recent = stateless_window(messages, self.settings.history_context_messages)
        items = [(name, raw) for m in recent for name, raw in m.images]
        prepared = await self.images.prepare(items, plan, (None, client_ip))
        built = stateless_context(
            recent,
            prepared,
            provider=plan.provider,
            model=plan.model,
            system_prompt=plan.system_prompt,
            detail=plan.detail,
        )

        async def context() -> Context:
            return built

        first = TurnUpdate(conversation_id="", provider=plan.provider.id, model=plan.model)
        async with contextlib.aclosing(self._stream(first, context, plan, len(items))) as updates:
            async for update in updates:
                yield update

    # -- conversations ------------------------------------------------------------------
    async def open(self, browser_id: str, cid: str) -> Opened | None:
        """The conversation, if `browser_id` owns it (None otherwise): one meta read, one
        messages read."""
        if not (is_valid_id(browser_id) and is_valid_id(cid)):
            return None
        store = await self.store()
        meta = await store.get_meta(cid)
        if not meta or meta.get("browser") != browser_id:
            return None
        return Opened(meta, tuple(await store.get_messages(cid)))

    async def import_conversation(
        self, data: str | object, browser_id: str | None, client_ip: str | None
    ) -> str:
        """A JSON export (its text, or already parsed) as a new conversation of `browser_id`
        (None: an API caller, counted by its address); returns its id.

        Counted in the imports budget first (junk too), before any text is parsed;
        ValueError says what is wrong with the data; ChatError for a budget or the storage
        quota. Messages are bounded like typed ones (conversation_import.py); each image goes
        through the image pipeline as an upload does, and one that is not an image is left
        out with a note in its message.
        """
        await self.check_budget("imports", browser_id, client_ip)
        parsed = await asyncio.to_thread(  # megabytes with images: parsed off the event loop
            conversation_import.parse_import,
            data,
            max_messages=self.settings.history_max_messages,
            max_chars=self.settings.max_message_chars,
            max_images=self.settings.max_images_per_message,
        )
        who = (browser_id, client_ip)
        items = parsed.image_items()
        prepared, dropped = await self.images.prepare_imported(items, parsed.meta, who)
        messages = parsed.apply_prepared(prepared, dropped)
        blobs = {i.sha256: (i.data, i.mime) for i in prepared.values()}
        adding = len(json.dumps(messages, ensure_ascii=False).encode())
        adding += sum(len(data) for data, _ in blobs.values())
        await self.budgets.check_storage(*who, adding)
        store = await self.store()
        cid, charged = await store.import_parsed(parsed.meta, messages, blobs, browser_id)
        await self.budgets.charge_api(*who, charged)
        return cid

    async def history(self, cid: str) -> list[dict]:
        store = await self.store()
        if not cid or not is_valid_id(cid):
            raise ChatError("That conversation id is not valid (32 hexadecimal characters).")
        return await store.get_messages(cid)

    async def display(self, cid: str, messages: Sequence[dict] | None = None) -> list[dict]:
        """The stored conversation as Chatbot messages (images written to local files);
        `messages`: its history, when the caller has it already (read otherwise)."""
        return (await self.display_indexed(cid, messages))[0]

    async def display_indexed(
        self, cid: str, messages: Sequence[dict] | None = None
    ) -> tuple[list[dict], list[int]]:
        """Chatbot messages and, for each, the position of the stored message it shows
        (-1: the note on earlier messages); only the last `display_limit` are shown
        (chat_view.render_indexed)."""
        if not cid:
            return [], []
        if messages is None:
            messages = await self.history(cid)
        paths: dict[int, list[str]] = {}
        for position in range(first_shown(len(messages), self.display_limit), len(messages)):
            refs = messages[position].get("images") if messages[position]["role"] == "user" else ()
            if refs:
                paths[position] = [p for ref in refs if (p := await self.images.path(ref))]
        return render_indexed(messages, paths, self.display_limit)

    async def image_path(self, ref: dict) -> str | None:
        """A local file for a stored image, so the Chatbot can show it after a reload."""
        return await self.images.path(ref)


def trailing_answers(messages: Sequence[dict]) -> int:
    """How many assistant messages end the conversation (after its last user message)."""
    count = 0
    while count < len(messages) and messages[-1 - count]["role"] == "assistant":
        count += 1
    return count


def sampling_meta(sampling: Mapping[str, object]) -> dict[str, str]:
    """Generation settings as conversation metadata ("" = the provider's default)."""
    return {name: "" if value is None else str(value) for name, value in sampling.items()}
