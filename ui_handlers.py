"""What each event of the page does, but for the conversation list (ui_conversations.py).
Every handler takes its inputs by component (Gradio passes a dict when an event's inputs are
a set) and returns a dict of the components it updates; a component it leaves out is left as
it is.

The turn's own work (validate, store, stream, save) is chat.ChatService's; these only turn
its snapshots into what the page shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import gradio as gr

import ui_options
from chat import ChatError, TurnRequest, TurnUpdate
from chat_view import display_answer, display_user
from config import CUSTOM_ROLE
from history import HistoryUnavailable, is_valid_id, new_id
from http_guards import client_ip
from markup_text import safe_markdown
from ui_state import Outcome, Update, answer_view, browser_id_of, browser_value, usage_line
from ui_versions import VersionHandlers

NO_SNAPSHOT = (
    "## This shared chat is not available\n"
    "The link was revoked, has expired, or is mistyped. · 此分享链接已失效或有误。"
)
SHARED_NOTE = "*A read-only snapshot someone shared. · 别人分享的只读对话快照。*"


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
        gr.Row(visible=False),  # the compare panel
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


def linked_conversation(http: gr.Request | None, name: str = "c") -> str:
    """The conversation id in the page's address (`?c=<id>`), or "" (also the token of a
    shared snapshot, `?share=<token>`)."""
    value = (http.query_params.get(name) or "").strip() if http is not None else ""
    return value if is_valid_id(value) else ""


class Handlers(VersionHandlers):
    show_busy = staticmethod(show_busy)
    show_idle = staticmethod(show_idle)
    enable_input = staticmethod(enable_input)

    # -- page load and settings -----------------------------------------------------------
    async def on_load(
        self, data: dict, http: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> Update:
        """Give the browser its id and reopen a conversation: the one the page's address
        names (`?c=<id>`: a bookmark, a second tab), else the one it had open."""
        ui, state = self.ui, data[self.ui.browser]
        if http is not None and "share" in http.query_params:
            return await self.shared_page(data, linked_conversation(http, "share"))
        # Signed in (Gradio's login, or Hugging Face's: Gradio fills `profile` from the
        # session): the account's conversations, whatever id this browser held before.
        account = self.account_id(http, profile)
        # A browser that held an account's id and is signed in no more (a logout on a
        # shared computer) starts afresh: the next visitor never sees that account's chats.
        was_account = bool((state or {}).get("account"))
        browser_id = account or (new_id() if was_account else browser_id_of(state))
        linked = linked_conversation(http)
        cid = linked or (state or {}).get("conversation_id", "")
        try:
            opened = await self.service.open(browser_id, cid) if is_valid_id(cid) else None
            if linked and opened is None:  # not this browser's: its own last one instead
                gr.Info("That link names a conversation this browser does not have.")
                cid = (state or {}).get("conversation_id", "")
                opened = await self.service.open(browser_id, cid) if is_valid_id(cid) else None
            cid = cid if opened else ""
            shown: Any = await self.chat_value(cid, opened.messages) if opened else []
            listing = await self.conversation_list(browser_id, cid or None, tz=data[ui.tz])
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
            opened, cid, shown, listing = None, "", [], ""
        keys, prompts = data[ui.remembered_keys], data[ui.prompts]
        return {
            ui.browser: browser_value({"account": bool(account)}, browser_id, cid),
            ui.conversation_id: cid,
            ui.chatbot: shown,
            ui.conversations: listing,
            ui.usage_total: usage_line(opened.messages) if opened else "",
            **self.settings_for(opened.meta if opened else {}, keys),
            ui.saved_prompt: gr.Dropdown(choices=sorted(prompts or {}), value=None),
            ui.tab_keys: ui_options.user_keys(keys),  # remembered keys are this tab's too
            ui.remember_keys: gr.Checkbox(value=bool(ui_options.user_keys(keys))),
        }

    async def shared_page(self, data: dict, token: str) -> Update:
        """A shared snapshot, read-only: no sidebar, no input, nothing of the viewer's own
        chats; the viewer's browser state is left as it was."""
        ui = self.ui
        try:
            shared = await (await self.service.store()).get_shared(token) if token else None
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
            shared = None
        if shared is None:
            title, shown = NO_SNAPSHOT, []
        else:
            messages = shared["messages"]
            shown = await self.service.display("shared", messages, max(1, len(messages)))
            title = f"## {safe_markdown(shared.get('title') or 'Shared chat')}\n{SHARED_NOTE}"
        return {
            ui.sidebar: gr.Sidebar(visible=False),
            ui.workspace: gr.Column(visible=False),
            ui.shared_view: gr.Column(visible=True),
            ui.shared_title: title,
            ui.shared_chat: shown,
            ui.browser: data[ui.browser],
        }

    def on_provider_change(self, provider_id: str) -> Update:
        provider = self.providers.get(provider_id)
        choices = ui_options.model_choices(self.providers, provider_id)
        return {self.ui.model: gr.Dropdown(choices=choices, value=provider.default_model)}

    def on_role_change(self, role: str) -> Update:
        return {self.ui.custom_group: gr.Group(visible=role == CUSTOM_ROLE)}

    def use_saved_prompt(self, data: dict) -> Update:
        saved = (data[self.ui.prompts] or {}).get(data[self.ui.saved_prompt])
        return {self.ui.custom_prompt: saved} if saved is not None else gr.skip()

    def save_prompt(self, data: dict) -> Update:
        ui = self.ui
        name = " ".join((data[ui.prompt_name] or "").split())[:60]
        prompt = (data[ui.custom_prompt] or "").strip()
        if not name or not prompt:
            gr.Warning("Write a prompt and give it a name to save it.")
            return gr.skip()
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
            return gr.skip()
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

    def begin_edit(self, edited: gr.EditData) -> Update:
        """The edit event's data (index, new text), kept for the streaming step after it:
        Gradio gives event data only to the step the event itself triggers."""
        return {self.ui.edit_data: {"index": edited.index, "value": edited.value}}

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
        """Answer the last message again: a new version of the last answer."""
        request = self.turn_request(data, http)
        if not request.conversation_id:
            gr.Info("Nothing to answer again yet: send a message first.")
            yield gr.skip()
            return
        async for update in self._stream(self.service.retry(request), request, window=data):
            yield update

    async def compare(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        """A new version of the last answer from the model now chosen, streamed into the
        right column of the compare panel (start_compare opened it)."""
        request = self.turn_request(data, http)
        if not request.conversation_id or not data[self.ui.compare_pick]:
            yield gr.skip()  # nothing to compare with (start_compare said so)
            return
        updates = self.service.retry(request)
        async for update in self._stream(updates, request, into=self.ui.compare_right):
            yield update

    async def edit(self, data: dict, http: gr.Request) -> AsyncIterator[Update]:
        """The user edited one of their messages in the chat: answer again from there."""
        edited, request = data[self.ui.edit_data], self.turn_request(data, http)
        if not request.conversation_id or not edited:
            yield gr.skip()
            return
        index = edited["index"] if isinstance(edited["index"], int) else edited["index"][0]
        value = edited["value"]
        request.text = value if isinstance(value, str) else str(value or "")
        edits = self.service.edit_shown(request, index, data[self.ui.window])
        async for update in self._stream(edits, request, window=data):
            yield update

    async def _stream(
        self,
        updates: AsyncIterator[TurnUpdate],
        request: TurnRequest,
        shown: list[dict] | None = None,
        message: dict | None = None,
        *,
        window: dict | None = None,
        into: Any = None,
    ) -> AsyncIterator[Update]:
        """The chat while the answer streams: the stored conversation (rendered when a
        snapshot carries it: the first and the last) with the answer so far under it.
        A refusal becomes an inline notice and a toast, and the message goes back into the
        box (Outcome.restore): nothing the user typed is lost. `window`: the event's data,
        whose window of messages the chat keeps; `into`: the Chatbot streamed into (the
        compare panel's shows the answer alone)."""
        ui = self.ui
        target = into or ui.chatbot
        limit = (window or {}).get(ui.window) or None
        # The outcome State is empty when a turn starts (finish_turn and after_stop empty it).
        # It is sent only when it changes (each set rebuilds its config in the session): when
        # the stream starts, when a new conversation gets its id, and at the end.
        sent, outcome = None, Outcome(request.conversation_id)
        above, last = shown or [], None

        def chat(value: list[dict]) -> Update:
            nonlocal sent
            update: Update = {target: value}
            if outcome != sent:  # (Outcome | None)
                update[ui.outcome] = sent = outcome
            return update

        try:
            async for update in updates:
                last = update
                outcome = replace(
                    outcome, conversation_id=update.conversation_id or outcome.conversation_id
                )
                if update.done and update.messages is not None:
                    # Saved: the stored truth (receipts, usage), and the conversation's usage.
                    outcome = replace(outcome, usage=usage_line(update.messages))
                    if into is None:
                        cid = outcome.conversation_id
                        yield chat(await self.service.display(cid, list(update.messages), limit))
                        continue
                if into is not None:  # Compare's column shows the answer alone
                    yield chat(answer_view(update))
                    continue
                if update.messages is not None and shown is None:
                    # A retry or an edit: the conversation it answers, as stored now. (A new
                    # message shows what the browser had, plus the message: redrawn at the end
                    # only, since each redraw of a long chat moves its 40-message window.)
                    above = await self.service.display(
                        outcome.conversation_id, list(update.messages), limit
                    )
                yield chat([*above, *answer_view(update)])
            if last is not None and last.error:
                gr.Warning(last.error)
        except ChatError as exc:
            gr.Warning(str(exc))
            if shown is None:  # a retry or an edit refused: the chat stays as it is
                yield gr.skip()  # (a stream that never yields would blank its outputs)
                return
            outcome = replace(outcome, restore=message)
            yield chat([*shown, *display_answer("", status="error", error=str(exc))])

    async def finish_turn(self, data: dict) -> Update:
        """After the stream: the conversation's id, the list, its usage, the input box (a
        refused message back in it, else empty). Every output gets a value: a skipped one
        would cost a component rebuild."""
        ui = self.ui
        shown_cid = data[ui.conversation_id]
        outcome = data[ui.outcome] or Outcome(shown_cid)
        browser_id, cid = browser_id_of(data[ui.browser]), outcome.conversation_id
        update: Update = {
            ui.browser: browser_value(data[ui.browser], browser_id, cid),
            ui.chat_input: gr.MultimodalTextbox(value=outcome.restore) if outcome.restore else None,
            ui.outcome: None,  # the next turn starts from nothing
        }
        if cid != shown_cid:
            update[ui.conversation_id] = cid
        if outcome.usage is not None:
            update[ui.usage_total] = outcome.usage
        try:
            if cid:  # a first answer: its title is being made (briefly waited for, not more)
                await self.service.title_ready(cid)
            update[ui.conversations] = await self.conversation_list(
                browser_id, cid or None, data[ui.search], data[ui.tz], purge=False
            )
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
        return update

    async def after_stop(self, data: dict) -> Update:
        """Stopped: the stream never reached its last snapshot; show what was stored."""
        ui = self.ui
        cid = (data[ui.outcome] or Outcome(data[ui.conversation_id])).conversation_id
        update = await self.finish_turn(data)
        update[ui.compare_panel] = gr.Row(visible=False)
        try:
            opened = await self.service.open(browser_id_of(data[ui.browser]), cid)
            if opened:
                messages = list(opened.messages)
                update[ui.chatbot] = await self.chat_value(cid, messages, data[ui.window])
                update[ui.usage_total] = usage_line(messages)
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
        return update

    async def undo(self, data: dict) -> Update:
        """Remove the last exchange and put the user's message back into the input box."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        if not cid:
            return gr.skip()
        try:
            undone = await self.service.undo_last(cid)
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
            return gr.skip()
        if undone is None:
            return gr.skip()
        messages = list(undone.messages)
        restored: dict[str, Any] = {"text": undone.text, "files": list(undone.image_paths)}
        return {
            ui.chatbot: await self.chat_value(cid, messages, data[ui.window]),
            ui.chat_input: gr.MultimodalTextbox(value=restored),
            ui.usage_total: usage_line(messages),
        }
