"""The Blocks factory: the page's layout and which event runs which handler.

`build_demo(settings, service)` only lays out and wires. What each event does is in
ui_handlers.py (the chat, settings, keys), ui_conversations.py (the list) and ui_api.py (the
public API); every handler names the components it updates (dict returns keyed by `UI`
fields), never their position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

import ui_controls
import ui_sidebar
from chat import ChatService
from config import Settings, upload_dir
from images import DETAILS
from ui_api import ApiHandlers
from ui_assets import (
    CHAT_LINKS_JS,
    CONVERSATION_URL_JS,
    EXAMPLES,
    EXAMPLES_DIR,
    LATEX,
    PAGE_LOADED_JS,
    STORAGE_KEY,
    TIME_ZONE_JS,
)
from ui_conversations import ConversationHandlers
from ui_handlers import Handlers
from ui_state import UNDO_DELETE_SECONDS, browser_secret
from ui_text import i18n

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
# A step Gradio runs in the browser (transpiled to JavaScript; no inputs, properties only).
# No progress display: Gradio's would stay on its outputs, spinning, after the step is done.
IN_BROWSER: dict[str, Any] = {"js": True, "show_progress": "hidden", **PRIVATE}


@dataclass
class UI:
    """Every component a handler reads or updates, by name."""

    # Per browser (localStorage) and per tab (server memory of this page).
    browser: gr.BrowserState
    remembered_keys: gr.BrowserState
    prompts: gr.BrowserState
    tab_keys: gr.State
    conversation_id: gr.State
    pending: gr.MultimodalTextbox  # hidden: the message being answered
    edit_data: gr.State  # an edit event's data, for the streaming step after it
    outcome: gr.State  # what a streamed turn ended with, for the step after it
    window: gr.State  # how many stored messages the chat shows ("Load earlier" widens it)
    tz: gr.Number  # hidden: the reader's time zone (minutes east of UTC), for the list's dates
    chat_links: gr.HTML  # empty: it hears the chat's own links (ui_assets.CHAT_LINKS_JS)
    # Sidebar.
    sidebar: gr.Sidebar
    new_chat_btn: gr.Button
    search: gr.Textbox
    conversations: gr.HTML
    import_btn: gr.UploadButton
    # A shared snapshot, read-only (the page opened with ?share=<token>).
    shared_view: gr.Column
    shared_title: gr.Markdown
    shared_chat: gr.Chatbot
    workspace: gr.Column
    # The open chat's header.
    title: gr.Textbox
    pin_btn: gr.Button
    share_btn: gr.Button
    export_btn: gr.Button
    delete_btn: gr.Button
    usage_total: gr.Markdown
    share_row: gr.Row
    share_link: gr.Textbox
    unshare_btn: gr.Button
    exported: gr.File
    deleted_row: gr.Row
    deleted_note: gr.Markdown
    undo_delete_btn: gr.Button
    deleted: gr.State  # the conversation Undo would bring back
    undo_timer: gr.Timer
    # Above the chat.
    role: gr.Dropdown
    provider: gr.Dropdown
    model: gr.Dropdown
    custom_group: gr.Group
    custom_prompt: gr.Textbox
    saved_prompt: gr.Dropdown
    prompt_name: gr.Textbox
    save_prompt_btn: gr.Button
    # The chat.
    chatbot: gr.Chatbot
    compare_panel: gr.Row
    compare_left_label: gr.Markdown
    compare_left: gr.Chatbot
    pick_left: gr.Button
    compare_right_label: gr.Markdown
    compare_right: gr.Chatbot
    pick_right: gr.Button
    compare_pick: gr.State  # the versions the two columns show
    chat_input: gr.MultimodalTextbox
    stop_btn: gr.Button
    retry_btn: gr.Button
    undo_btn: gr.Button
    compare_btn: gr.Button
    detail: gr.Radio
    # Settings.
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Number
    key_boxes: list[gr.Textbox]
    remember_keys: gr.Checkbox
    save_keys_btn: gr.Button
    forget_keys_btn: gr.Button
    check_btn: gr.Button
    check_result: gr.Markdown

    def turn_settings(self) -> set[gr.components.Component]:
        """What a turn is answered with (ui_options.turn_request reads them by name)."""
        return {
            self.role,
            self.custom_prompt,
            self.provider,
            self.model,
            self.detail,
            self.temperature,
            self.top_p,
            self.max_tokens,
            self.tab_keys,
        }

    def busy_controls(self) -> list[gr.components.Component]:
        return [self.chat_input, self.stop_btn, self.retry_btn, self.undo_btn, self.compare_btn]


def build_demo(settings: Settings, service: ChatService) -> gr.Blocks:
    """The whole page and its public API. Reads the BrowserState secret (APP_SECRET, or Redis)
    and registers the examples folder as static files; nothing else happens until launch."""
    secret = browser_secret(settings)
    # The example image is served from examples/ as a static file: a cached copy would be
    # deleted by the upload cleanup after UPLOAD_MAX_AGE_HOURS and then show broken.
    gr.set_static_paths([EXAMPLES_DIR])
    max_age_s = int(settings.upload_max_age_hours * 3600)
    with gr.Blocks(
        title="Multimodal Chat · 多模态对话",
        fill_height=True,
        delete_cache=(min(3600, max_age_s), max_age_s),
    ) as demo:
        ui = _layout(settings, service, secret)
        handlers = Handlers(ui, service, settings)
        conversations = ConversationHandlers(ui, service, settings, upload_dir() / "chat-exports")
        # The public API first: its names (/retry...) are taken before the page's private
        # events would get them from their functions' names.
        ApiHandlers(service, conversations.exports).register()
        _wire_session(demo, ui, handlers)
        _wire_turns(ui, handlers)
        ui_sidebar.wire(ui, conversations)
    return demo


# -- layout ------------------------------------------------------------------------------------
def _layout(settings: Settings, service: ChatService, secret: str) -> UI:
    providers = service.providers
    parts: dict[str, Any] = {
        "browser": gr.BrowserState(
            {"browser_id": "", "conversation_id": ""}, storage_key=STORAGE_KEY, secret=secret
        ),
        # The user's own API keys: `tab_keys` holds them for this page only (gone on reload);
        # `remembered_keys` is localStorage, written only when the user asks. BrowserState's
        # encryption key is sent to the page: anything that reads localStorage can read it.
        "remembered_keys": gr.BrowserState({}, storage_key=f"{STORAGE_KEY}-keys", secret=secret),
        "prompts": gr.BrowserState({}, storage_key=f"{STORAGE_KEY}-prompts", secret=secret),
        "tab_keys": gr.State({}),
        "conversation_id": gr.State(""),
        # The message being answered (the input box empties at once): its value stays in the
        # browser until the stream reads it.
        "pending": gr.MultimodalTextbox(visible=False, file_count="multiple"),
        "edit_data": gr.State(None),
        "outcome": gr.State(None),
        "window": gr.State(service.display_limit),
        "deleted": gr.State(""),
        "compare_pick": gr.State(None),
        # In the page but not shown: the page's script writes them (ui_assets.PAGE_JS).
        "tz": gr.Number(value=0, visible="hidden", elem_id="tz-offset", precision=0),
        "chat_links": gr.HTML("", elem_id="chat-links", js_on_load=CHAT_LINKS_JS, visible="hidden"),
        "undo_timer": gr.Timer(UNDO_DELETE_SECONDS, active=False),
    }
    parts |= ui_sidebar.sidebar(service)
    parts |= ui_sidebar.shared_view()
    with gr.Column(elem_id="workspace", scale=1) as parts["workspace"]:
        parts |= ui_sidebar.chat_header()
        parts |= ui_controls.model_row(providers)
        parts |= _chat(settings)
        parts |= ui_controls.settings_panel(settings, providers)
    return UI(**parts)


def _chat(settings: Settings) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "chatbot": gr.Chatbot(
            elem_id="chatbot",
            label=i18n("chat"),
            examples=EXAMPLES,
            show_label=False,
            buttons=["copy", "copy_all"],
            latex_delimiters=LATEX,
            allow_tags=False,  # no custom tags: messages go through markup_text.safe_markdown
            editable="user",
            scale=1,
            min_height=360,
            autoscroll=True,
            placeholder=i18n("chat_placeholder"),  # type: ignore[arg-type]  # as above
        ),
    }
    parts |= _compare_panel()
    parts |= {
        "chat_input": gr.MultimodalTextbox(
            elem_id="chat-input",
            file_types=["image"],
            file_count="multiple",
            sources=["upload"],
            placeholder=i18n("input_placeholder"),  # type: ignore[arg-type]  # as above
            show_label=False,
            autofocus=True,
            max_plain_text_length=settings.max_message_chars,
            # Enabled once the load event gave this browser its id: a message sent before
            # went under a second, throwaway id and never showed in the sidebar.
            interactive=False,
        ),
    }
    small: dict[str, Any] = {"size": "sm", "scale": 0, "min_width": 90}
    with gr.Row(elem_id="actions"):
        parts["stop_btn"] = gr.Button(
            i18n("stop"), elem_id="stop", visible=False, variant="stop", **small
        )
        parts["retry_btn"] = gr.Button(i18n("retry"), elem_id="retry", **small)
        parts["undo_btn"] = gr.Button(i18n("undo"), elem_id="undo", **small)
        parts["compare_btn"] = gr.Button(
            i18n("compare"), elem_id="compare", **{**small, "min_width": 110}
        )
        parts["detail"] = gr.Radio(
            # The label is not shown without a container: say it in the first choice.
            [("image detail: auto" if d == "auto" else d, d) for d in DETAILS],
            value="auto",
            label=i18n("detail"),
            elem_id="detail",
            scale=0,
            min_width=320,
            container=False,
        )
    return parts


def _compare_panel() -> dict[str, Any]:
    """Compare: the answer shown and a new one from the model now chosen, side by side (one
    above the other on a phone); the user picks the one to continue with."""
    parts: dict[str, Any] = {}
    with gr.Row(visible=False, elem_id="compare-panel", equal_height=False) as parts[
        "compare_panel"
    ]:
        for side in ("left", "right"):
            with gr.Column(min_width=300, elem_id=f"compare-{side}-column"):
                parts[f"compare_{side}_label"] = gr.Markdown(elem_id=f"compare-{side}-label")
                parts[f"compare_{side}"] = gr.Chatbot(
                    elem_id=f"compare-{side}",
                    show_label=False,
                    latex_delimiters=LATEX,
                    allow_tags=False,
                    buttons=["copy"],
                    height="auto",
                    min_height=120,
                    max_height=520,
                )
                parts[f"pick_{side}"] = gr.Button(
                    i18n(f"continue_{side}"), elem_id=f"pick-{side}", size="sm"
                )
    return parts


# -- wiring ------------------------------------------------------------------------------------
def _wire_session(demo: gr.Blocks, ui: UI, h: Handlers) -> None:
    # The reader's time zone first (in the browser), for the list's Today / Yesterday.
    demo.load(None, None, ui.tz, js=TIME_ZONE_JS, **PRIVATE).then(
        h.on_load,
        {ui.browser, ui.remembered_keys, ui.prompts, ui.tz},
        [
            ui.browser,
            ui.conversation_id,
            ui.chatbot,
            ui.conversations,
            ui.usage_total,
            *h.settings_outputs,
            ui.saved_prompt,
            ui.tab_keys,
            ui.remember_keys,
            ui.sidebar,
            ui.workspace,
            ui.shared_view,
            ui.shared_title,
            ui.shared_chat,
        ],
        **PRIVATE,
    ).then(h.enable_input, None, ui.chat_input, **IN_BROWSER).then(
        None, ui.browser, None, js=PAGE_LOADED_JS, **PRIVATE
    )
    ui.browser.change(None, ui.browser, None, js=CONVERSATION_URL_JS, **PRIVATE)
    ui.provider.change(h.on_provider_change, ui.provider, ui.model, **PRIVATE)
    ui.role.change(h.on_role_change, ui.role, ui.custom_group, **PRIVATE)
    ui.saved_prompt.input(
        h.use_saved_prompt, {ui.saved_prompt, ui.prompts}, ui.custom_prompt, **PRIVATE
    )
    ui.save_prompt_btn.click(
        h.save_prompt,
        {ui.prompt_name, ui.custom_prompt, ui.prompts},
        [ui.prompts, ui.saved_prompt],
        **PRIVATE,
    )
    key_outputs = [ui.tab_keys, ui.remembered_keys, ui.provider, *ui.key_boxes]
    ui.save_keys_btn.click(
        h.save_keys,
        {ui.tab_keys, ui.remember_keys, ui.provider, *ui.key_boxes},
        key_outputs,
        **PRIVATE,
    )
    ui.forget_keys_btn.click(h.forget_keys, {ui.provider}, key_outputs, **PRIVATE)
    ui.remember_keys.input(
        h.remember_or_forget, {ui.tab_keys, ui.remember_keys}, ui.remembered_keys, **PRIVATE
    )
    # At most two checks at once in this process, whoever asks (each spends the server's keys).
    ui.check_btn.click(
        h.check_all,
        {ui.tab_keys, ui.browser},
        ui.check_result,
        concurrency_limit=2,
        concurrency_id="provider-check",
        **PRIVATE,
    )
    ui.chatbot.example_select(h.use_example, None, ui.chat_input, **PRIVATE)
    shown: set[Any] = {ui.conversation_id, ui.browser, ui.window}
    ui.chatbot.like(h.rate, shown, ui.usage_total, show_progress="hidden", **PRIVATE)
    # A version arrow (‹ 2/3 ›) or "Load earlier" clicked in the chat.
    ui.chat_links.click(
        h.follow_chat_link, shown, [ui.chatbot, ui.usage_total, ui.window], **PRIVATE
    )


def _wire_turns(ui: UI, h: Handlers) -> None:
    """A turn: busy controls (in the browser), the stream into the chat alone, the
    bookkeeping after it (list, id, usage), idle controls (in the browser). Each server step
    costs a queue round and a component rebuild per output it skips, so there are two."""
    turn_in = {ui.conversation_id, ui.browser, ui.window, *ui.turn_settings()}
    finish_in = {ui.outcome, ui.browser, ui.conversation_id, ui.search, ui.tz}
    streamed = [ui.chatbot, ui.outcome]
    # Busy also closes a comparison left open: the next turn continues from the answer shown.
    busy = [*ui.busy_controls(), ui.compare_panel]
    finished = [
        ui.conversation_id,
        ui.chat_input,
        ui.conversations,
        ui.browser,
        ui.usage_total,
        ui.outcome,
    ]

    def stream_after(started: Any, stream: Any, inputs: set) -> Any:
        shown = started.then(h.show_busy, None, busy, **IN_BROWSER)
        return stream_then_finish(shown, stream, inputs)

    def stream_then_finish(shown: Any, stream: Any, inputs: set) -> Any:
        streaming = shown.then(stream, inputs, streamed, **PRIVATE)
        streaming.then(h.finish_turn, finish_in, finished, **PRIVATE).then(
            h.show_idle, None, ui.busy_controls(), **IN_BROWSER
        )
        return streaming

    # Submit: the message moves to the hidden `pending` box and the input empties, in the
    # browser (no server step); the stream reads it from there.
    submitted = stream_after(
        ui.chat_input.submit(
            None,
            ui.chat_input,
            [ui.pending, ui.chat_input],
            js='(message) => [message, {"text": "", "files": []}]',
            show_progress="hidden",
            **PRIVATE,
        ),
        h.respond,
        {ui.pending, ui.chatbot, *turn_in},
    )
    retried = stream_then_finish(
        ui.retry_btn.click(h.show_busy, None, busy, **IN_BROWSER), h.retry, turn_in
    )
    # Compare: the panel opens with the answer shown on the left; the new one streams into
    # the right column; the chat above shows the conversation up to the question.
    compare_view = [
        ui.chatbot,
        ui.compare_panel,
        ui.compare_left,
        ui.compare_left_label,
        ui.compare_right,
        ui.compare_right_label,
        ui.compare_pick,
    ]
    compared = (
        ui.compare_btn.click(h.show_busy, None, busy, **IN_BROWSER)
        .then(h.start_compare, turn_in, compare_view, **PRIVATE)
        .then(h.compare, {*turn_in, ui.compare_pick}, [ui.compare_right, ui.outcome], **PRIVATE)
    )
    compared.then(
        h.finish_compare,
        {*finish_in, ui.compare_pick},
        [*finished, ui.compare_right, ui.compare_right_label, ui.compare_pick],
        **PRIVATE,
    ).then(h.show_idle, None, ui.busy_controls(), **IN_BROWSER)
    picked: set[Any] = {ui.compare_pick, ui.conversation_id, ui.browser, ui.window}
    chosen = [ui.chatbot, ui.compare_panel, ui.usage_total]
    ui.pick_left.click(h.pick_left, picked, chosen, **PRIVATE)
    ui.pick_right.click(h.pick_right, picked, chosen, **PRIVATE)
    edited = stream_after(
        ui.chatbot.edit(h.begin_edit, None, ui.edit_data, queue=False, **PRIVATE),
        h.edit,
        {ui.edit_data, *turn_in},
    )
    # A stopped stream never reaches its last update: show what was stored instead.
    ui.stop_btn.click(
        None, None, None, cancels=[submitted, retried, compared, edited], **PRIVATE
    ).then(
        h.after_stop,
        {*finish_in, ui.window},
        [ui.chatbot, ui.compare_panel, *finished],
        **PRIVATE,
    ).then(h.show_idle, None, ui.busy_controls(), **IN_BROWSER)
    ui.undo_btn.click(
        h.undo,
        {ui.conversation_id, ui.browser, ui.window},
        [ui.chatbot, ui.chat_input, ui.usage_total],
        **PRIVATE,
    )
