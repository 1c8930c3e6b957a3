"""The conversation side of the chat service, free of any UI: the store (opened lazily), the
budgets, open, import, history and how it is shown, versions and feedback, titles by the
model. ChatService (chat.py) adds the turns on top."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import auto_title
import conversation_import
import conversation_tree as tree
from chat_budgets import ChatBudgets
from chat_errors import ChatError
from chat_images import ChatImages
from chat_types import Opened, Plan
from chat_view import answer_at, first_shown, render_indexed
from config import Settings
from history import ConversationChanged, HistoryStore, HistoryUnavailable, InvalidId, is_valid_id
from providers import Providers
from rate_limits import Hit

log = logging.getLogger("chat")

FEEDBACK = ("up", "down", None)
CHANGED = "The conversation changed in another tab: reload the page and try again."


class ConversationService:
    """The store, the budgets and a browser's conversations (see ChatService)."""

    def __init__(self, settings: Settings, providers: Providers, image_dir: Path) -> None:
        self.settings = settings
        self.providers = providers
        self.stream_interval = 0.05
        self.display_limit = 40  # stored messages shown in the Chatbot (chat_view)
        self._store: HistoryStore | None = None
        self._store_lock = asyncio.Lock()
        self.budgets = ChatBudgets(settings, self.store)
        self.images = ChatImages(settings, self.budgets, self.store, image_dir)
        self.provider_names = {p.id: p.name for p in providers.all()}
        self._titles: dict[str, asyncio.Task] = {}  # titles being made, by conversation

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

    async def switch_version(self, browser_id: str, cid: str, position: int, target: int) -> Opened:
        """Show version `target` of the message at `position` (its branch with it): what the
        page shows next and the model sees next. ChatError when it cannot be done."""
        opened = await self._owned(browser_id, cid)
        messages = list(opened.messages)
        if not 0 <= position < len(messages):
            raise ChatError(CHANGED)
        try:
            path = tree.switch(messages[position], messages[position + 1 :], target)
        except ValueError as exc:
            raise ChatError(str(exc)) from None
        await self._rewrite(cid, position, path, len(messages))
        return Opened(opened.meta, tuple([*messages[:position], *path]))

    async def set_feedback(
        self, browser_id: str, cid: str, position: int, value: str | None
    ) -> tuple[dict, ...]:
        """Thumbs up ("up"), down ("down") or none (None) on the answer at `position`; the
        conversation as stored after it."""
        opened = await self._owned(browser_id, cid)
        return await self._rate(cid, list(opened.messages), position, value)

    async def set_feedback_shown(
        self,
        browser_id: str,
        cid: str,
        shown_index: int,
        value: str | None,
        window: int | None = None,
    ) -> tuple[dict, ...] | None:
        """`set_feedback` on the answer of the Chatbot's message `shown_index` (as
        `display_indexed` shows the conversation with `window` messages); None when that
        message is not an answer's. One read of the conversation."""
        opened = await self._owned(browser_id, cid)
        messages = list(opened.messages)
        shown, positions = render_indexed(messages, {}, window or self.display_limit)
        position = answer_at(messages, shown, positions, shown_index)
        return await self._rate(cid, messages, position, value) if position >= 0 else None

    async def _rate(
        self, cid: str, messages: list[dict], position: int, value: str | None
    ) -> tuple[dict, ...]:
        if value not in FEEDBACK:
            raise ChatError("Feedback is a thumbs up or down.")
        if not 0 <= position < len(messages) or messages[position]["role"] != "assistant":
            raise ChatError("Only an answer takes a thumbs up or down.")
        rated = {k: v for k, v in messages[position].items() if k != "feedback"}
        if value:
            rated["feedback"] = value
        tail = [rated, *messages[position + 1 :]]
        await self._rewrite(cid, position, tail, len(messages), bump=False)
        return tuple([*messages[:position], *tail])

    async def _owned(self, browser_id: str, cid: str) -> Opened:
        try:
            opened = await self.open(browser_id, cid)
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        if opened is None:
            raise ChatError("That conversation is no longer available. Start a new chat.")
        return opened

    async def _rewrite(
        self, cid: str, position: int, path: list[dict], length: int, *, bump: bool = True
    ) -> None:
        try:
            await (await self.store()).replace_from(cid, position, path, length=length, bump=bump)
        except ConversationChanged:
            raise ChatError(CHANGED) from None
        except InvalidId:
            raise ChatError("That conversation is no longer available. Start a new chat.") from None
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None

    def _start_title(self, cid: str, plan: Plan) -> None:
        """The model titles the conversation after its first answer (auto_title.py), in the
        background: the turn does not wait for it; `title_ready` lets the page do so briefly."""
        if not self.settings.auto_title:
            return
        made = auto_title.title_after_first_answer(
            self._store,  # type: ignore[arg-type]  # set: the answer was just saved in it
            self.providers,
            self.settings,
            cid,
            plan.provider.id,
            plan.model,
            plan.api_key,
        )
        task = asyncio.get_running_loop().create_task(made)
        self._titles[cid] = task
        task.add_done_callback(lambda _: self._titles.pop(cid, None))

    async def title_ready(self, cid: str, timeout: float = 1.5) -> None:
        """Wait up to `timeout` s for the title being made for `cid`, if one is."""
        task = self._titles.get(cid)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)

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
        meta = dict(parsed.meta)
        if browser_id is not None:  # a second import of one file is told apart by its title
            taken = {c.get("title", "") for c in await store.list_conversations(browser_id)}
            meta["title"] = unique_title(meta.get("title") or "Imported chat", taken)
        cid, charged = await store.import_parsed(meta, messages, blobs, browser_id)
        await self.budgets.charge_api(*who, charged)
        return cid

    async def history(self, cid: str) -> list[dict]:
        """The conversation as the API gives it (conversation_tree.public_path): the path
        shown, each message with more than one version carrying them all and the shown one's
        index."""
        return tree.public_path(await self._messages(cid))

    async def _messages(self, cid: str) -> list[dict]:
        store = await self.store()
        if not cid or not is_valid_id(cid):
            raise ChatError("That conversation id is not valid (32 hexadecimal characters).")
        return await store.get_messages(cid)

    async def display(
        self, cid: str, messages: Sequence[dict] | None = None, window: int | None = None
    ) -> list[dict]:
        """The stored conversation as Chatbot messages (images written to local files);
        `messages`: its history, when the caller has it already (read otherwise)."""
        return (await self.display_indexed(cid, messages, window))[0]

    async def display_indexed(
        self, cid: str, messages: Sequence[dict] | None = None, window: int | None = None
    ) -> tuple[list[dict], list[int]]:
        """Chatbot messages and, for each, the position of the stored message it shows
        (-1: the note on earlier messages); only the last `window` (display_limit when
        None) are shown (chat_view.render_indexed)."""
        if not cid:
            return [], []
        if messages is None:
            messages = await self._messages(cid)
        limit = window or self.display_limit
        paths: dict[int, list[str]] = {}
        for position in range(first_shown(len(messages), limit), len(messages)):
            refs = messages[position].get("images") if messages[position]["role"] == "user" else ()
            if refs:
                paths[position] = [p for ref in refs if (p := await self.images.path(ref))]
        return render_indexed(messages, paths, limit, self.provider_names)

    async def image_path(self, ref: dict) -> str | None:
        """A local file for a stored image, so the Chatbot can show it after a reload."""
        return await self.images.path(ref)


def unique_title(title: str, taken: set[str]) -> str:
    """`title`, or "title (2)", "title (3)"... when the browser has it already."""
    if title not in taken:
        return title
    number = 2
    while f"{title} ({number})" in taken:
        number += 1
    return f"{title} ({number})"
