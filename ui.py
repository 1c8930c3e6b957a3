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

import ui_options
from chat import ChatService
from config import DEFAULT_ROLE, Settings, upload_dir
from images import DETAILS
from ui_api import ApiHandlers
from ui_assets import (
    CONVERSATION_URL_JS,
    EXAMPLES,
    EXAMPLES_DIR,
    LATEX,
    PAGE_LOADED_JS,
    STORAGE_KEY,
)
from ui_conversations import ConversationHandlers
from ui_handlers import Handlers
from ui_state import browser_secret
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
    # Sidebar.
    new_chat_btn: gr.Button
    conversations: gr.Radio
    title: gr.Textbox
    export_btn: gr.Button
    exported: gr.File
    import_btn: gr.UploadButton
    delete_btn: gr.Button
    usage_total: gr.Markdown
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
        _wire_session(demo, ui, handlers)
        _wire_turns(ui, handlers)
        _wire_conversations(ui, conversations)
        ApiHandlers(service, conversations.exports).register()
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
    }
    parts |= _sidebar(service)
    parts |= _model_row(providers)
    parts |= _chat(settings)
    parts |= _settings_panel(settings, providers)
    return UI(**parts)


def _sidebar(service: ChatService) -> dict[str, Any]:
    with gr.Sidebar(open=True, elem_id="sidebar"):
        gr.Markdown(i18n("conversations"))
        parts: dict[str, Any] = {
            "new_chat_btn": gr.Button(i18n("new_chat"), elem_id="new-chat", variant="primary"),
            "conversations": gr.Radio(
                label="This browser's chats", choices=[], elem_id="conversations", show_label=False
            ),
        }
        with gr.Accordion(i18n("this_chat"), open=False, elem_id="chat-tools"):
            parts["title"] = gr.Textbox(
                label=i18n("title"),
                elem_id="chat-title",
                max_lines=1,
                placeholder=i18n("title_placeholder"),
            )
            parts["export_btn"] = gr.Button(i18n("export"), size="sm", elem_id="export")
            parts["exported"] = gr.File(
                label=i18n("downloads"),
                visible=False,
                elem_id="exported",
                file_count="multiple",
                interactive=False,
            )
            parts["import_btn"] = gr.UploadButton(
                i18n("import"),  # type: ignore[arg-type]  # I18nData works; the hint says str
                file_types=[".json"],
                size="sm",
                elem_id="import",
            )
            parts["delete_btn"] = gr.Button(
                i18n("delete"), size="sm", variant="stop", elem_id="delete-chat"
            )
            parts["usage_total"] = gr.Markdown(elem_id="usage-total")
        gr.Markdown(ui_options.status_markdown(service), elem_id="status")
    return parts


def _model_row(providers: Any) -> dict[str, Any]:
    default = providers.get(providers.default_id)
    with gr.Row(equal_height=True):
        parts: dict[str, Any] = {
            "role": gr.Dropdown(
                ui_options.role_choices(), value=DEFAULT_ROLE, label=i18n("role"), elem_id="role"
            ),
            "provider": gr.Dropdown(
                ui_options.provider_choices(providers),
                value=providers.default_id,
                label=i18n("provider"),
                elem_id="provider",
            ),
            "model": gr.Dropdown(
                ui_options.model_choices(providers, providers.default_id),
                value=default.default_model,
                label=i18n("model"),
                elem_id="model",
                allow_custom_value=True,
            ),
        }
    with gr.Group(visible=False) as parts["custom_group"]:
        parts["custom_prompt"] = gr.Textbox(
            label=i18n("custom_prompt"),
            lines=2,
            elem_id="custom-prompt",
            placeholder=i18n("custom_prompt_placeholder"),
        )
        with gr.Row(equal_height=True):
            parts["saved_prompt"] = gr.Dropdown(
                [], label="Saved prompts · 已保存", elem_id="saved-prompts", scale=2
            )
            parts["prompt_name"] = gr.Textbox(
                label="Save as · 保存为", placeholder="Name", elem_id="prompt-name", scale=2
            )
            parts["save_prompt_btn"] = gr.Button("Save · 保存", elem_id="save-prompt", scale=1)
    return parts


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


def _settings_panel(settings: Settings, providers: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    with gr.Accordion(i18n("settings"), open=False, elem_id="settings"):
        with gr.Row():
            parts["temperature"] = gr.Slider(
                0, 2, value=0.7, step=0.1, label="Temperature · 温度", elem_id="temperature"
            )
            parts["top_p"] = gr.Slider(
                0.05, 1, value=1.0, step=0.05, label="Top-p", elem_id="top-p"
            )
            parts["max_tokens"] = gr.Number(
                value=0,
                minimum=0,
                maximum=settings.max_output_tokens,  # MAX_OUTPUT_TOKENS; the server clamps too
                step=256,
                precision=0,
                label="Max tokens (0 = model default)",
                elem_id="max-tokens",
            )
        gr.Markdown(
            "**Your own API keys · 自己的密钥**: they enable that provider for you only and "
            "are never stored on the server or logged. By default they are kept for this tab "
            "only. *Remember on this device* keeps them in this browser's storage, where "
            "anyone using this browser profile (or a browser extension) can read them."
        )
        with gr.Row():
            parts["key_boxes"] = [
                gr.Textbox(
                    label=f"{p.name} ({p.key_env})",
                    type="password",
                    elem_id=f"key-{p.id}",
                    placeholder="sk-…",
                    min_width=220,
                )
                for p in ui_options.byok_providers(providers)
            ]
        with gr.Row():
            parts["remember_keys"] = gr.Checkbox(
                value=False,
                label="Remember on this device · 在此设备上记住",
                elem_id="remember-keys",
                min_width=220,
            )
            parts["save_keys_btn"] = gr.Button("Use my keys · 使用", elem_id="save-keys", size="sm")
            parts["forget_keys_btn"] = gr.Button(
                "Forget my keys · 清除", elem_id="forget-keys", size="sm"
            )
            parts["check_btn"] = gr.Button(
                "Check providers · 检查", elem_id="check-providers", size="sm"
            )
        parts["check_result"] = gr.Markdown(elem_id="check-result")
    return parts


# -- wiring ------------------------------------------------------------------------------------
def _wire_session(demo: gr.Blocks, ui: UI, h: Handlers) -> None:
    demo.load(
        h.on_load,
        {ui.browser, ui.remembered_keys, ui.prompts},
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


def _wire_turns(ui: UI, h: Handlers) -> None:
    """A turn: busy controls (in the browser), the stream into the chat alone, the
    bookkeeping after it (list, id, usage), idle controls (in the browser). Each server step
    costs a queue round and a component rebuild per output it skips, so there are two."""
    turn_in = {ui.conversation_id, ui.browser, *ui.turn_settings()}
    streamed = [ui.chatbot, ui.outcome]
    finished = [
        ui.conversation_id,
        ui.chat_input,
        ui.conversations,
        ui.browser,
        ui.usage_total,
        ui.outcome,
    ]

    def stream_after(started: Any, stream: Any, inputs: set) -> Any:
        busy = started.then(h.show_busy, None, ui.busy_controls(), **IN_BROWSER)
        return stream_then_finish(busy, stream, inputs)

    def stream_then_finish(busy: Any, stream: Any, inputs: set) -> Any:
        streaming = busy.then(stream, inputs, streamed, **PRIVATE)
        streaming.then(
            h.finish_turn, {ui.outcome, ui.browser, ui.conversation_id}, finished, **PRIVATE
        ).then(h.show_idle, None, ui.busy_controls(), **IN_BROWSER)
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
        ui.retry_btn.click(h.show_busy, None, ui.busy_controls(), **IN_BROWSER), h.retry, turn_in
    )
    compared = stream_then_finish(
        ui.compare_btn.click(h.show_busy, None, ui.busy_controls(), **IN_BROWSER),
        h.compare,
        turn_in,
    )
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
        {ui.outcome, ui.browser, ui.conversation_id},
        [ui.chatbot, *finished],
        **PRIVATE,
    ).then(h.show_idle, None, ui.busy_controls(), **IN_BROWSER)
    ui.undo_btn.click(
        h.undo,
        {ui.conversation_id, ui.browser},
        [ui.chatbot, ui.chat_input, ui.usage_total],
        **PRIVATE,
    )


def _wire_conversations(ui: UI, h: ConversationHandlers) -> None:
    opened = [ui.chatbot, ui.conversation_id, ui.browser, ui.conversations, ui.usage_total]
    ui.new_chat_btn.click(h.new_chat, {ui.browser}, [*opened, ui.chat_input], **PRIVATE)
    ui.conversations.input(
        h.open_conversation,
        {ui.conversations, ui.browser, ui.tab_keys},
        [*opened, *h.settings_outputs],
        **PRIVATE,
    )
    ui.conversation_id.change(
        h.show_current, {ui.conversation_id}, [ui.title, ui.exported], **PRIVATE
    )
    ui.title.submit(
        h.rename, {ui.conversation_id, ui.title, ui.browser}, ui.conversations, **PRIVATE
    )
    ui.export_btn.click(h.export_files, {ui.conversation_id, ui.browser}, ui.exported, **PRIVATE)
    ui.import_btn.upload(h.import_file, {ui.import_btn, ui.browser}, opened, **PRIVATE)
    ui.delete_btn.click(h.delete_current, {ui.conversation_id, ui.browser}, opened, **PRIVATE)
