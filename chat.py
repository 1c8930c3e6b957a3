"""One chat turn, free of any UI: read the conversation once -> store the message -> build the
request -> stream -> save; and retry, edit and undo the same way (open, import, versions,
feedback and titles: chat_conversations.ConversationService, which ChatService extends).

The UI and the public API share this code, so a turn behaves the same whichever way it
arrives. Its parts: chat_types (requests, update snapshots), chat_context (the upstream
request), chat_stream (the one stream-and-finish path), chat_images, chat_view (Chatbot
dicts), usage (tokens, cost), chat_budgets (rate limits, quotas).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import conversation_tree as tree
from chat_budgets import header_pixels
from chat_checks import check_message, check_vision, plan_for
from chat_context import (
    Context,
    InputMessage,
    image_part,
    stateless_context,
    stateless_window,
    stored_context,
)
from chat_conversations import CHANGED, ConversationService
from chat_errors import ChatError, ChatRateLimited
from chat_images import user_message
from chat_stream import Saver, answer_message, stream_and_finish
from chat_types import Opened, Plan, Status, TurnRequest, TurnUpdate, Undone
from chat_view import render_indexed, without_navigator
from config import DEFAULT_ROLE
from history import ConversationChanged, HistoryStore, HistoryUnavailable, InvalidId
from markup_text import unshown

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


class ChatService(ConversationService):
    """Runs turns against a provider registry and a history store."""

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
                    title_auto="1",  # auto_title.py may replace it after the first answer
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

    async def retry(self, req: TurnRequest) -> AsyncGenerator[TurnUpdate, None]:
        """Answer the last user message again, with the role and model now chosen: the new
        answer becomes the last answer's newest version (conversation_tree), the one shown
        and the one the model sees next; the earlier ones stay (a failed one is replaced).
        Compare is a retry the page shows beside the version it had."""
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
        try:
            await store.update_meta(cid, **sampling_meta(plan.sampling))
        except HistoryUnavailable as exc:
            raise ChatError(f"{exc} Try again in a moment.") from None
        previous = messages[-1] if trailing else None
        # The model sees the conversation without the answer it replaces.
        stored = messages[:-1] if trailing else messages
        answer = self._answer(
            store,
            cid,
            stored,
            plan,
            len(last_user.get("images") or []),
            previous=previous,
        )
        async with contextlib.aclosing(answer) as updates:
            async for update in updates:
                yield update

    async def edit_shown(
        self, req: TurnRequest, shown_index: int, window: int | None = None
    ) -> AsyncGenerator[TurnUpdate, None]:
        """A new version of a user message, answered again: a branch. What followed the
        earlier version stays with it (conversation_tree). `shown_index` is the Chatbot's
        (as `display_indexed` shows the conversation with `window` messages), `req.text` what
        the edit box gave (markup_text's marks taken out)."""
        store, messages = await self._read(req.conversation_id)
        _, positions = render_indexed(messages, {}, window or self.display_limit)
        position = positions[shown_index] if 0 <= shown_index < len(positions) else -1
        if position < 0 or messages[position]["role"] != "user":
            raise ChatError("Only your own messages can be edited.")
        original = messages[position].get("content")
        typed = without_navigator(req.text or "")
        text = unshown(typed, original if isinstance(original, str) else "")
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
        current = messages[index]
        edited = tree.add_version(
            current, messages[index + 1 :], {**current, "content": text, "edited": time.time()}
        )
        try:
            await store.replace_from(cid, index, [edited], length=len(messages))
            await store.update_meta(cid, **sampling_meta(plan.sampling))
        except ConversationChanged:
            raise ChatError(CHANGED) from None
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
        *,
        previous: dict | None = None,
    ) -> AsyncGenerator[TurnUpdate, None]:
        """The answer to a stored conversation (`stored`: what the model sees, as stored
        now), built from its tail and saved at the end; no further read of the conversation.
        `previous`: the stored answer after `stored` this one is a new version of."""
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
                if previous is None:
                    await store.append_turn(cid, [message])
                else:
                    message = new_version(previous, message)
                    await store.replace_from(cid, len(stored), [message], length=len(stored) + 1)
            except ConversationChanged:
                log.info("answer for %s not saved: changed in another tab", cid)
                error = "The conversation changed in another tab: this answer was not saved."
                return replace(update, status=Status.INCOMPLETE, error=error, messages=None)
            except InvalidId:  # the conversation was deleted while the answer streamed
                log.info("answer for %s not saved: the conversation is gone", cid)
                return replace(update, messages=None)
            except HistoryUnavailable as exc:
                log.warning("answer for %s not saved: %s", cid, exc)
                status = Status.INCOMPLETE if update.status == Status.COMPLETE else update.status
                error = f"{exc} This answer was shown but not saved."
                return replace(update, status=status, error=error, messages=None)
            if not stored[:-1] and previous is None and update.status == Status.COMPLETE:
                self._start_title(cid, plan)
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


def new_version(previous: dict, answer: dict) -> dict:
    """The new answer as a version beside `previous` (a failed one is not worth keeping)."""
    if previous.get("status") == Status.ERROR:
        return tree.replace_version(previous, answer)
    return tree.add_version(previous, [], answer)


def trailing_answers(messages: Sequence[dict]) -> int:
    """How many assistant messages end the conversation (after its last user message)."""
    count = 0
    while count < len(messages) and messages[-1 - count]["role"] == "assistant":
        count += 1
    return count


def sampling_meta(sampling: Mapping[str, object]) -> dict[str, str]:
    """Generation settings as conversation metadata ("" = the provider's default)."""
    return {name: "" if value is None else str(value) for name, value in sampling.items()}
