"""What each event of the page does. Every handler takes its inputs by component (Gradio
passes a dict when an event's inputs are a set) and returns a dict of the components it
updates; a component it leaves out is left as it is.

The turn's own work (validate, store, stream, save) is chat.ChatService's; these only turn
its snapshots into what the page shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

import ui_options
from chat import ChatError, ChatService, TurnRequest, TurnUpdate
from chat_view import display_answer, display_user
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings
from exports import ExportFiles
from history import HistoryUnavailable, app_secret_from_redis, is_valid_id, new_id
from http_guards import client_ip
from markup_text import safe_markdown
from token_usage import conversation_usage

if TYPE_CHECKING:
    from ui import UI

log = logging.getLogger("app")
Update = dict[Any, Any]  # component -> its new value or gr.update


def browser_secret(settings: Settings) -> str:
    """The BrowserState secret: stable across restarts and replicas, or the ids would change."""
    if settings.app_secret:
        return settings.app_secret
    if settings.redis_url:
        try:
            return app_secret_from_redis(settings.redis_url)
        except HistoryUnavailable as exc:
            raise SystemExit(str(exc)) from None
    return secrets.token_hex(32)  # embedded store: history dies with the process anyway


def upload_dir() -> Path:
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def browser_id_of(state: Mapping | None) -> str:
    browser_id = (state or {}).get("browser_id", "")
    return browser_id if is_valid_id(browser_id) else new_id()


def usage_line(messages: Sequence[dict]) -> str:
    line = conversation_usage(messages)
    return f"**Usage · 用量:** {line}" if line else ""


def answer_view(update: TurnUpdate) -> list[dict]:
    """The answer of a snapshot as Chatbot messages (thinking, answer, notice)."""
    return display_answer(
        update.answer,
        update.reasoning,
        status=update.status,
        error=update.error,
        streaming=not update.done,
        usage=update.usage if update.done else None,
    )


@dataclass(frozen=True)
class Outcome:
    """What a streamed turn left for the step after it (Stop, or the bookkeeping)."""

    conversation_id: str = ""
    usage: str | None = None  # the conversation's usage line, when the turn ended with it
    restore: dict | None = None  # a refused message, put back into the input box


# Run in the browser (Gradio transpiles them to JavaScript): such a step takes no inputs and
# returns its updates in order, here that of UI.busy_controls(). On the server each property
# update would rebuild its component and JSON schema, ~1 ms apiece, ten per turn.
def show_busy() -> tuple:
    return (
        gr.MultimodalTextbox(interactive=False),
        gr.Button(visible=True),
        gr.Button(interactive=False),
        gr.Button(interactive=False),
        gr.Button(interactive=False),
    )


def show_idle() -> tuple:
    return (
        gr.MultimodalTextbox(interactive=True),
        gr.Button(visible=False),
        gr.Button(interactive=True),
        gr.Button(interactive=True),
        gr.Button(interactive=True),
    )


def enable_input() -> gr.MultimodalTextbox:
    return gr.MultimodalTextbox(interactive=True)


class Handlers:
    show_busy = staticmethod(show_busy)
    show_idle = staticmethod(show_idle)
    enable_input = staticmethod(enable_input)

    def __init__(self, ui: UI, service: ChatService, settings: Settings, export_root: Path) -> None:
        self.ui, self.service, self.settings = ui, service, settings
        self.providers: Any = service.providers
        # Exports live in Gradio's cache (so the File component can serve them), each in a
        # folder named by random bits; they expire and go when their conversation does.
        self.exports = ExportFiles(export_root)
        self.settings_outputs = [
            ui.role, ui.provider, ui.model, ui.temperature, ui.top_p, ui.max_tokens
        ]  # fmt: skip

    # -- page load and settings -----------------------------------------------------------
    async def on_load(self, data: dict) -> Update:
        """Give the browser its id and reopen the conversation it had open."""
        ui, state = self.ui, data[self.ui.browser]
        browser_id = browser_id_of(state)
        cid = (state or {}).get("conversation_id", "")
        try:
            opened = await self.service.open(browser_id, cid) if is_valid_id(cid) else None
            cid = cid if opened else ""
            shown = await self.service.display(cid, list(opened.messages)) if opened else []
            listing = await self.conversation_list(browser_id, cid or None)
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
            opened, cid, shown, listing = None, "", [], gr.Radio(choices=[], value=None)
        keys, prompts = data[ui.remembered_keys], data[ui.prompts]
        return {
            ui.browser: {"browser_id": browser_id, "conversation_id": cid},
            ui.conversation_id: cid,
            ui.chatbot: shown,
            ui.conversations: listing,
            ui.usage_total: usage_line(opened.messages) if opened else "",
            **self.settings_for(opened.meta if opened else {}, keys),
            ui.saved_prompt: gr.Dropdown(choices=sorted(prompts or {}), value=None),
            ui.tab_keys: ui_options.user_keys(keys),  # remembered keys are this tab's too
            ui.remember_keys: gr.Checkbox(value=bool(ui_options.user_keys(keys))),
        }

    def settings_for(self, meta: Mapping, keys: Mapping | None = None) -> Update:
        """Role, provider, model and sampling as the conversation left them (or defaults)."""
        ui, providers = self.ui, self.providers
        role = meta.get("role") if meta.get("role") in {*ROLES, CUSTOM_ROLE} else DEFAULT_ROLE
        choices = ui_options.provider_choices(providers, keys)
        provider_id = meta.get("provider", "")
        if provider_id not in {pid for _, pid in choices}:
            provider_id = providers.default_id
        model = meta.get("model") or providers.get(provider_id).default_model
        # An older conversation may have asked for more than MAX_OUTPUT_TOKENS now allows.
        max_tokens = min(int(_number(meta, "max_tokens", 0)), self.settings.max_output_tokens)
        return {
            ui.role: gr.Dropdown(value=role),
            ui.provider: gr.Dropdown(choices=choices, value=provider_id),
            ui.model: gr.Dropdown(
                choices=ui_options.model_choices(providers, provider_id), value=model
            ),
            ui.temperature: gr.Slider(value=_number(meta, "temperature", 0.7)),
            ui.top_p: gr.Slider(value=_number(meta, "top_p", 1.0)),
            ui.max_tokens: gr.Number(value=max_tokens),
        }

    def on_provider_change(self, provider_id: str) -> Update:
        provider = self.providers.get(provider_id)
        choices = ui_options.model_choices(self.providers, provider_id)
        return {self.ui.model: gr.Dropdown(choices=choices, value=provider.default_model)}

    def on_role_change(self, role: str) -> Update:
        return {self.ui.custom_group: gr.Group(visible=role == CUSTOM_ROLE)}

    def use_saved_prompt(self, data: dict) -> Update:
        saved = (data[self.ui.prompts] or {}).get(data[self.ui.saved_prompt])
        return {self.ui.custom_prompt: saved} if saved is not None else {}

    def save_prompt(self, data: dict) -> Update:
        ui = self.ui
        name = " ".join((data[ui.prompt_name] or "").split())[:60]
        prompt = (data[ui.custom_prompt] or "").strip()
        if not name or not prompt:
            gr.Warning("Write a prompt and give it a name to save it.")
            return {}
        saved = {**(data[ui.prompts] or {}), name: prompt}
        gr.Info(f"Saved “{name}” in this browser.")
        return {ui.prompts: saved, ui.saved_prompt: gr.Dropdown(choices=sorted(saved), value=name)}

    def save_keys(self, data: dict) -> Update:
        """Use the typed keys in this tab; their providers become selectable for this user.
        With "remember" off nothing is written to the browser's storage, and what was
        remembered is removed."""
        ui = self.ui
        kept = ui_options.user_keys(data[ui.tab_keys])
        byok = ui_options.byok_providers(self.providers)
        for spec, box in zip(byok, ui.key_boxes, strict=True):
            if (data[box] or "").strip():
                kept[spec.id] = data[box].strip()
        remember = bool(data[ui.remember_keys])
        where = "remembered on this device" if remember else "for this tab only"
        gr.Info(f"Using your keys ({where}) for: {', '.join(sorted(kept)) or 'none'}.")
        cleared = {
            box: gr.Textbox(value="", placeholder="saved ✓" if p.id in kept else "sk-…")
            for p, box in zip(byok, ui.key_boxes, strict=True)
        }
        choices = ui_options.provider_choices(self.providers, kept)
        return {
            ui.tab_keys: kept,
            ui.remembered_keys: kept if remember else {},
            ui.provider: gr.Dropdown(choices=choices, value=data[ui.provider]),
            **cleared,
        }

    def remember_or_forget(self, data: dict) -> Update:
        """Ticking "remember" stores this tab's keys on the device; unticking removes them."""
        ui = self.ui
        keys = ui_options.user_keys(data[ui.tab_keys]) if data[ui.remember_keys] else {}
        return {ui.remembered_keys: keys}

    def forget_keys(self, data: dict) -> Update:
        ui = self.ui
        gr.Info("Your keys were removed from this tab and this device.")
        choices = ui_options.provider_choices(self.providers, {})
        provider_id = data[ui.provider]
        if provider_id not in {pid for _, pid in choices}:
            provider_id = self.providers.default_id
        return {
            ui.tab_keys: {},
            ui.remembered_keys: {},
            ui.provider: gr.Dropdown(choices=choices, value=provider_id),
            **{box: gr.Textbox(value="", placeholder="sk-…") for box in ui.key_boxes},
        }

    async def check_all(self, data: dict, http: gr.Request) -> Update:
        """The provider check (as `python app.py --check`), with this user's keys too. It
        spends the server's keys: its own budget (CHECKS_PER_MINUTE) and one at a time per
        browser; a raw queue call is refused the same way."""
        from check import check_providers, format_report

        ui = self.ui
        browser_id, ip = browser_id_of(data[ui.browser]), client_ip(http)
        try:
            await self.service.check_budget("checks", browser_id, ip)
            async with self.service.one_at_a_time(
                "checks",
                browser_id,
                ip,
                "A provider check is already running: wait for its result.",
            ):
                results = await check_providers(
                    self.providers,
                    api_keys=ui_options.user_keys(data[ui.tab_keys]),
                    for_operator=False,
                )
        except ChatError as exc:
            gr.Warning(str(exc))
            return {}
        # Provider error text is shown as Markdown: made inert like any chat text.
        return {ui.check_result: safe_markdown(format_report(results))}

    def use_example(self, evt: gr.SelectData) -> Update:
        example = evt.value if isinstance(evt.value, dict) else {}
        files = [f.get("path") if isinstance(f, dict) else f for f in example.get("files") or []]
        value = {"text": example.get("text", ""), "files": files}
        return {self.ui.chat_input: gr.MultimodalTextbox(value=value)}

    # -- a turn -------------------------------------------------------------------------------
    def turn_request(self, data: dict, http: gr.Request | None) -> TurnRequest:
        """The settings a turn is answered with, from the page's controls."""
        ui = self.ui
        role, top_p, max_tokens = data[ui.role], data[ui.top_p], data[ui.max_tokens]
        temperature = data[ui.temperature]
        return TurnRequest(
            role=role,
            system_prompt=data[ui.custom_prompt] if role == CUSTOM_ROLE else "",
            provider=data[ui.provider],
            model=data[ui.model],
            detail=data[ui.detail],
            temperature=float(temperature) if temperature is not None else None,
            top_p=float(top_p) if top_p is not None and float(top_p) < 1 else None,
            max_tokens=int(max_tokens) if max_tokens else None,
            api_keys=ui_options.user_keys(data[ui.tab_keys]),
            conversation_id=data[ui.conversation_id],
            browser_id=browser_id_of(data[ui.browser]),
            client_ip=client_ip(http),
        )

    def take_message(self, data: dict) -> Update:
        """Submit: the box empties at once; the message waits in `pending` for the stream."""
        ui = self.ui
        return {
            ui.chat_input: None,
            ui.pending: data[ui.chat_input],
            ui.outcome: Outcome(data[ui.conversation_id]),
        }

    def start_turn(self, data: dict) -> Update:
        return {self.ui.outcome: Outcome(data[self.ui.conversation_id])}

    def begin_edit(self, data: dict, edited: gr.EditData) -> Update:
        """The edit event's data (index, new text), kept for the streaming step after it:
        Gradio gives event data only to the step the event itself triggers."""
        return {
            self.ui.edit_data: {"index": edited.index, "value": edited.value},
            self.ui.outcome: Outcome(data[self.ui.conversation_id]),
        }

    async def respond(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        ui = self.ui
        message = data[ui.pending] or {}
        text, files = message.get("text", ""), message.get("files", [])
        paths = [f if isinstance(f, str) else f.get("path", "") for f in files]
        # Shown at once (the turn checks, optimises images and stores before it answers).
        shown = [*(data[ui.chatbot] or []), *display_user(text, paths)]
        yield {ui.chatbot: shown}
        request = self.turn_request(data, http)
        request.text, request.images = text, paths
        async for update in self._stream(self.service.turn(request), request, shown, message):
            yield update

    async def retry(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        """Answer the last message again, replacing the last answer."""
        async for update in self._retry(data, http, keep_previous=False):
            yield update

    async def compare(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        """Answer the last message again beside the last answer (two models side by side)."""
        async for update in self._retry(data, http, keep_previous=True):
            yield update

    async def _retry(
        self, data: dict, http: gr.Request, *, keep_previous: bool
    ) -> AsyncIterator[Update]:
        request = self.turn_request(data, http)
        if not request.conversation_id:
            gr.Info("Nothing to answer again yet: send a message first.")
            return
        updates = self.service.retry(request, keep_previous=keep_previous)
        async for update in self._stream(updates, request):
            yield update

    async def edit(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        """The user edited one of their messages in the chat: answer again from there."""
        edited, request = data[self.ui.edit_data], self.turn_request(data, http)
        if not request.conversation_id or not edited:
            return
        index = edited["index"] if isinstance(edited["index"], int) else edited["index"][0]
        value = edited["value"]
        request.text = value if isinstance(value, str) else str(value or "")
        async for update in self._stream(self.service.edit_shown(request, index), request):
            yield update

    async def _stream(
        self,
        updates: AsyncIterator[TurnUpdate],
        request: TurnRequest,
        shown: list[dict] | None = None,
        message: dict | None = None,
    ) -> AsyncIterator[Update]:
        """The chat while the answer streams: the stored conversation (rendered when a
        snapshot carries it: the first and the last) with the answer so far under it.
        A refusal becomes an inline notice and a toast, and the message goes back into the
        box (Outcome.restore): nothing the user typed is lost."""
        ui = self.ui
        outcome = Outcome(request.conversation_id)
        above, last = shown or [], None
        try:
            async for update in updates:
                last = update
                outcome = Outcome(update.conversation_id or outcome.conversation_id)
                if update.messages is not None:
                    stored = await self.service.display(
                        outcome.conversation_id, list(update.messages)
                    )
                    if update.done:  # saved: the stored truth, with the conversation's usage
                        outcome = replace(outcome, usage=usage_line(update.messages))
                        yield {ui.chatbot: stored, ui.outcome: outcome}
                        continue
                    above = stored
                yield {ui.chatbot: [*above, *answer_view(update)], ui.outcome: outcome}
            if last is not None and last.error:
                gr.Warning(last.error)
        except ChatError as exc:
            gr.Warning(str(exc))
            if shown is None:  # a retry or an edit refused: the chat stays as it is
                yield {ui.outcome: outcome}
                return
            notice = display_answer("", status="error", error=str(exc))
            yield {ui.chatbot: [*shown, *notice], ui.outcome: replace(outcome, restore=message)}

    async def finish_turn(self, data: dict) -> Update:
        """After the stream: the conversation's id, the list, its usage, a refused message."""
        ui, outcome = self.ui, data[self.ui.outcome] or Outcome()
        browser_id, cid = browser_id_of(data[ui.browser]), outcome.conversation_id
        update: Update = {
            ui.conversation_id: cid,
            ui.browser: {"browser_id": browser_id, "conversation_id": cid},
        }
        if outcome.restore:
            update[ui.chat_input] = gr.MultimodalTextbox(value=outcome.restore)
        if outcome.usage is not None:
            update[ui.usage_total] = outcome.usage
        try:
            update[ui.conversations] = await self.conversation_list(browser_id, cid or None)
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
        return update

    async def after_stop(self, data: dict) -> Update:
        """Stopped: the stream never reached its last snapshot; show what was stored."""
        ui, outcome = self.ui, data[self.ui.outcome] or Outcome()
        update = await self.finish_turn(data)
        try:
            opened = await self.service.open(
                browser_id_of(data[ui.browser]), outcome.conversation_id
            )
            if opened:
                messages = list(opened.messages)
                update[ui.chatbot] = await self.service.display(outcome.conversation_id, messages)
                update[ui.usage_total] = usage_line(messages)
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
        return update

    async def undo(self, data: dict) -> Update:
        """Remove the last exchange and put the user's message back into the input box."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        if not cid:
            return {}
        try:
            undone = await self.service.undo_last(cid)
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
            return {}
        if undone is None:
            return {}
        messages = list(undone.messages)
        restored: dict[str, Any] = {"text": undone.text, "files": list(undone.image_paths)}
        return {
            ui.chatbot: await self.service.display(cid, messages),
            ui.chat_input: gr.MultimodalTextbox(value=restored),
            ui.usage_total: usage_line(messages),
        }

    # -- conversations ---------------------------------------------------------------------------
    async def conversation_list(self, browser_id: str, selected: str | None) -> gr.Radio:
        """The browser's conversations, newest first, with `selected` (None: none) chosen."""
        items = await (await self.service.store()).list_conversations(browser_id)
        choices = [(c.get("title") or "New chat", c["id"]) for c in items]
        return gr.Radio(choices=choices, value=selected)

    def _opened(self, browser_id: str, cid: str, shown: list, listing: Any, usage: str) -> Update:
        ui = self.ui
        return {
            ui.chatbot: shown,
            ui.conversation_id: cid,
            ui.browser: {"browser_id": browser_id, "conversation_id": cid},
            ui.conversations: listing,
            ui.usage_total: usage,
        }

    async def open_conversation(self, data: dict) -> Update:
        ui = self.ui
        browser_id, cid = browser_id_of(data[ui.browser]), data[ui.conversations]
        opened = await self.service.open(browser_id, cid) if is_valid_id(cid or "") else None
        if opened is None:
            return {}
        messages = list(opened.messages)
        shown = await self.service.display(cid, messages)
        return {
            **self._opened(browser_id, cid, shown, gr.skip(), usage_line(messages)),
            **self.settings_for(opened.meta, data[ui.tab_keys]),
        }

    def new_chat(self, data: dict) -> Update:
        browser_id = browser_id_of(data[self.ui.browser])
        return {
            **self._opened(browser_id, "", [], gr.Radio(value=None), ""),
            self.ui.chat_input: gr.MultimodalTextbox(value=None),
        }

    async def delete_current(self, data: dict) -> Update:
        ui = self.ui
        browser_id, cid = browser_id_of(data[ui.browser]), data[ui.conversation_id]
        store = await self.service.store()
        if cid and await store.owns(browser_id, cid):
            await store.delete_conversation(cid)
            await asyncio.to_thread(self.exports.forget, cid)
            gr.Info("Conversation deleted.")
        listing = await self.conversation_list(browser_id, None)
        return self._opened(browser_id, "", [], listing, "")

    async def show_current(self, data: dict) -> Update:
        """The open conversation's title; previous exports are hidden."""
        cid = data[self.ui.conversation_id]
        meta = await (await self.service.store()).get_meta(cid) if cid else None
        return {
            self.ui.title: gr.Textbox(value=(meta or {}).get("title", "")),
            self.ui.exported: gr.File(value=None, visible=False),
        }

    async def rename(self, data: dict) -> Update:
        ui = self.ui
        browser_id, cid = browser_id_of(data[ui.browser]), data[ui.conversation_id]
        title = " ".join((data[ui.title] or "").split())[:80]
        store = await self.service.store()
        if not (cid and title and await store.owns(browser_id, cid)):
            return {}
        await store.update_meta(cid, title=title)
        gr.Info(f"Renamed to “{title}”.")
        return {ui.conversations: await self.conversation_list(browser_id, cid)}

    async def export_files(self, data: dict) -> Update:
        """Markdown and JSON (with images) files of the open conversation, for download."""
        ui = self.ui
        cid, store = data[ui.conversation_id], await self.service.store()
        if not (cid and await store.owns(browser_id_of(data[ui.browser]), cid)):
            gr.Info("Send a message first: there is nothing to export yet.")
            return {ui.exported: gr.File(visible=False)}
        meta = await store.get_meta(cid) or {}
        exported = await store.export_json(cid)
        markdown = await store.export_markdown(cid)
        # In a worker thread: with images an export is megabytes to encode and write, which
        # on the event loop would stall every other user's stream meanwhile.
        files = await asyncio.to_thread(
            self.exports.write, cid, meta.get("title", ""), markdown or "", exported
        )
        return {ui.exported: gr.File(value=files, visible=True)}

    async def import_file(self, data: dict, http: gr.Request) -> Update:
        """A JSON export becomes a new conversation of this browser, and is opened."""
        ui = self.ui
        browser_id, file = browser_id_of(data[ui.browser]), data[ui.import_btn]
        try:
            text = await asyncio.to_thread(Path(file).read_text, encoding="utf-8")  # off the loop
            cid = await self.service.import_conversation(text, browser_id, client_ip(http))
            opened = await self.service.open(browser_id, cid)
        except (ChatError, HistoryUnavailable) as exc:  # a budget, the storage quota, Redis
            gr.Warning(str(exc))
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            gr.Warning(f"Import failed: {exc}")
            return {}
        gr.Info("Conversation imported.")
        messages = list(opened.messages) if opened else []
        shown = await self.service.display(cid, messages)
        listing = await self.conversation_list(browser_id, cid)
        return self._opened(browser_id, cid, shown, listing, usage_line(messages))


def _number(meta: Mapping, name: str, default: float) -> float:
    try:
        return float(meta.get(name) or default)
    except ValueError:
        return default
