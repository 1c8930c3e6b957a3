"""Gradio Blocks UI and public API: components wired to `chat.ChatService`.

Run `python app.py` (see --help), `gradio app.py` for reload mode, or deploy as a Space.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

import http_api
from chat import (
    ChatError,
    ChatService,
    TurnRequest,
    display_answer,
    display_user,
)
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings, load_settings
from history import HistoryUnavailable, app_secret_from_redis, is_valid_id, new_id
from images import DETAILS
from providers import Providers

log = logging.getLogger("app")
STORAGE_KEY = "mmchat-browser"
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]


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


settings = load_settings()
providers = Providers(timeout_s=settings.provider_timeout_s)
service = ChatService(settings, providers, image_dir=upload_dir() / "chat-images")


# -- choices for the dropdowns ------------------------------------------------------------
def role_choices() -> list[tuple[str, str]]:
    return [(role.name, role.id) for role in ROLES.values()] + [("Custom · 自定义", CUSTOM_ROLE)]


def provider_choices() -> list[tuple[str, str]]:
    return [(p.name, p.id) for p in providers.enabled()]


def model_choices(provider_id: str) -> list[tuple[str, str]]:
    provider = providers.get(provider_id)
    return [(f"{m} 👁" if provider.supports_vision(m) else m, m) for m in provider.models]


def status_markdown() -> str:
    store = (
        "Redis (`REDIS_URL`)"
        if settings.redis_url
        else (
            "**in memory**: conversations are lost when the app restarts. "
            "Set `REDIS_URL` to keep them"
        )
    )
    enabled = ", ".join(p.name for p in providers.enabled())
    hints = "\n".join(f"- {p.name}: {p.hint}" for p in providers.all() if not p.enabled)
    more = f"\n\n<details><summary>More providers</summary>\n\n{hints}\n</details>" if hints else ""
    return f"**History:** {store}.  \n**Providers:** {enabled}. 👁 = sees images.{more}"


# -- UI handlers (private: the public API is below) ----------------------------------------
def browser_id_of(state: dict | None) -> str:
    browser_id = (state or {}).get("browser_id", "")
    return browser_id if is_valid_id(browser_id) else new_id()


async def conversation_list(browser_id: str) -> gr.Radio:
    store = await service.store()
    items = await store.list_conversations(browser_id)
    return gr.Radio(choices=[(c.get("title") or "New chat", c["id"]) for c in items])


async def on_load(state: dict | None):
    """Give the browser its id and reopen the conversation it had open."""
    browser_id = browser_id_of(state)
    cid = (state or {}).get("conversation_id", "")
    try:
        store = await service.store()
        if not (cid and is_valid_id(cid) and await store.owns(browser_id, cid)):
            cid = ""
        shown = await service.display(cid)
        listing = await conversation_list(browser_id)
    except HistoryUnavailable as exc:
        gr.Warning(str(exc))
        cid, shown, listing = "", [], gr.Radio()
    meta = (await store.get_meta(cid) if cid else None) or {}
    state = {"browser_id": browser_id, "conversation_id": cid}
    return (
        state,
        cid,
        shown,
        gr.Radio(choices=listing.choices, value=cid or None),
        *settings_for(meta),
    )


def settings_for(meta: dict) -> tuple:
    """Role/provider/model dropdowns as the conversation left them (or the defaults)."""
    role = meta.get("role") if meta.get("role") in {*ROLES, CUSTOM_ROLE} else DEFAULT_ROLE
    provider_id = meta.get("provider", "")
    if provider_id not in {p.id for p in providers.enabled()}:
        provider_id = providers.default_id
    model = meta.get("model") or providers.get(provider_id).default_model
    return (
        gr.Dropdown(value=role),
        gr.Dropdown(value=provider_id),
        gr.Dropdown(choices=model_choices(provider_id), value=model),
    )


def on_provider_change(provider_id: str) -> gr.Dropdown:
    provider = providers.get(provider_id)
    return gr.Dropdown(choices=model_choices(provider_id), value=provider.default_model)


def on_role_change(role: str) -> gr.Textbox:
    return gr.Textbox(visible=role == CUSTOM_ROLE)


def busy(is_busy: bool) -> tuple:
    """Input, Stop, Retry and Undo while an answer streams (busy) or not."""
    return (
        gr.MultimodalTextbox(interactive=not is_busy),
        gr.Button(visible=is_busy),
        gr.Button(interactive=not is_busy),
        gr.Button(interactive=not is_busy),
    )


async def stream_into_chat(shown: list[dict], updates, failed_input=None):
    """Yield the Chatbot while `updates` streams; problems become an inline notice + toast."""
    update = None
    try:
        async for update in updates:
            answer = display_answer(
                update.answer,
                update.reasoning,
                status=update.status,
                error=update.error,
                streaming=not update.done,
            )
            yield [*shown, *answer], update.conversation_id, gr.MultimodalTextbox()
        if update is not None and update.error:
            gr.Warning(update.error)
    except ChatError as exc:
        gr.Warning(str(exc))
        notice = display_answer("", status="error", error=str(exc))
        # The message goes back into the input box: nothing the user typed is lost.
        restored = (
            gr.MultimodalTextbox(value=failed_input) if failed_input else gr.MultimodalTextbox()
        )
        yield [*shown, *notice], gr.skip(), restored


async def respond(
    message: dict,
    cid: str,
    role: str,
    prompt: str,
    provider: str,
    model: str,
    detail: str,
    state: dict,
):
    text, files = (message or {}).get("text", ""), (message or {}).get("files", [])
    paths = [f if isinstance(f, str) else f.get("path", "") for f in files]
    try:
        shown = await service.display(cid)
    except (ChatError, HistoryUnavailable):
        shown = []
    shown += display_user(text, paths)
    yield shown, cid, gr.MultimodalTextbox(value=None)
    request = TurnRequest(
        text=text,
        images=paths,
        role=role,
        system_prompt=prompt if role == CUSTOM_ROLE else "",
        provider=provider,
        model=model,
        detail=detail,
        conversation_id=cid,
        browser_id=browser_id_of(state),
    )
    async for out in stream_into_chat(shown, service.turn(request), failed_input=message):
        yield out


async def retry(cid: str, role: str, prompt: str, provider: str, model: str, detail: str):
    if not cid:
        gr.Info("Nothing to retry yet.")
        return
    shown = await service.display(cid)
    while shown and shown[-1]["role"] == "assistant":
        shown.pop()
    updates = service.retry(
        cid,
        role=role,
        system_prompt=prompt if role == CUSTOM_ROLE else "",
        provider=provider,
        model=model,
        detail=detail,
    )
    async for out in stream_into_chat(shown, updates):
        yield out


async def undo(cid: str):
    """Remove the last exchange and put the user's message back into the input box."""
    if not cid:
        return gr.skip(), gr.skip()
    try:
        message = await service.undo(cid)
    except (ChatError, HistoryUnavailable) as exc:
        gr.Warning(str(exc))
        return gr.skip(), gr.skip()
    restored = None
    if message is not None:
        paths = [p for ref in message.get("images") or [] if (p := await service.image_path(ref))]
        restored = {"text": message.get("content", ""), "files": paths}
    return await service.display(cid), gr.MultimodalTextbox(value=restored)


async def after_turn(cid: str, state: dict):
    """After a turn (finished, failed or stopped): the stored truth, the list, an idle input."""
    browser_id = browser_id_of(state)
    state = {"browser_id": browser_id, "conversation_id": cid}
    try:
        shown = await service.display(cid) if cid else gr.skip()
        listing = await conversation_list(browser_id)
        listing = gr.Radio(choices=listing.choices, value=cid or None)
    except (ChatError, HistoryUnavailable) as exc:
        gr.Warning(str(exc))
        shown, listing = gr.skip(), gr.skip()
    return (shown, listing, state, *busy(False))


async def open_conversation(cid: str, state: dict):
    browser_id = browser_id_of(state)
    store = await service.store()
    if not cid or not await store.owns(browser_id, cid):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    meta = await store.get_meta(cid) or {}
    state = {"browser_id": browser_id, "conversation_id": cid}
    return (await service.display(cid), cid, state, *settings_for(meta))


def new_chat(state: dict):
    state = {"browser_id": browser_id_of(state), "conversation_id": ""}
    return [], "", state, gr.Radio(value=None), gr.MultimodalTextbox(value=None)


async def delete_current(cid: str, state: dict):
    browser_id = browser_id_of(state)
    store = await service.store()
    if cid and await store.owns(browser_id, cid):
        await store.delete_conversation(cid)
        gr.Info("Conversation deleted.")
    listing = await conversation_list(browser_id)
    state = {"browser_id": browser_id, "conversation_id": ""}
    return [], "", state, gr.Radio(choices=listing.choices, value=None)


def title_of(meta: dict | None) -> str:
    return (meta or {}).get("title", "")


async def show_current(cid: str):
    """The open conversation's title; previous exports are hidden."""
    meta = await (await service.store()).get_meta(cid) if cid else None
    return gr.Textbox(value=title_of(meta)), gr.File(value=None, visible=False)


async def rename(cid: str, new_title: str, state: dict):
    browser_id = browser_id_of(state)
    title = " ".join((new_title or "").split())[:80]
    store = await service.store()
    if not (cid and title and await store.owns(browser_id, cid)):
        return gr.skip()
    await store.update_meta(cid, title=title)
    gr.Info(f"Renamed to “{title}”.")
    listing = await conversation_list(browser_id)
    return gr.Radio(choices=listing.choices, value=cid)


def export_dir() -> Path:
    path = upload_dir() / "chat-exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def export_files(cid: str, state: dict):
    """Markdown and JSON (with images) files of the open conversation, for download."""
    store = await service.store()
    if not (cid and await store.owns(browser_id_of(state), cid)):
        gr.Info("Send a message first: there is nothing to export yet.")
        return gr.File(visible=False)
    data = await store.export_json(cid)
    markdown = await store.export_markdown(cid)
    stem = export_dir() / f"chat-{cid[:8]}-{int(time.time())}"
    Path(f"{stem}.md").write_text(markdown or "", encoding="utf-8")
    Path(f"{stem}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return gr.File(value=[f"{stem}.md", f"{stem}.json"], visible=True)


async def import_file(file: str | None, state: dict):
    """A JSON export becomes a new conversation of this browser, and is opened."""
    browser_id = browser_id_of(state)
    try:
        cid = await import_conversation_text(Path(file).read_text(encoding="utf-8"), browser_id)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        gr.Warning(f"Import failed: {exc}")
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    gr.Info("Conversation imported.")
    listing = await conversation_list(browser_id)
    state = {"browser_id": browser_id, "conversation_id": cid}
    return await service.display(cid), cid, state, gr.Radio(choices=listing.choices, value=cid)


async def import_conversation_text(text: str, browser_id: str | None) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("that file is not JSON. Pick a file exported from this app.") from None
    if not isinstance(data, dict):
        raise ValueError("that JSON is not a conversation export.")
    return await (await service.store()).import_json(data, browser_id)


# -- the public API (mirrors the seed service's REST endpoints) ------------------------------
async def api_chat(
    message: str,
    images: list[str] | None = None,
    role: str = DEFAULT_ROLE,
    provider: str = "",
    model: str = "",
    conversation_id: str = "",
    system_prompt: str = "",
    detail: str = "auto",
):
    """Stream an answer: yields (reply_so_far, conversation_id). Empty id = new conversation."""
    request = TurnRequest(
        text=message or "",
        images=[p for p in images or [] if p],
        role=role or DEFAULT_ROLE,
        system_prompt=system_prompt or "",
        provider=provider or "",
        model=model or "",
        detail=detail or "auto",
        conversation_id=(conversation_id or "").strip(),
    )
    try:
        async for update in service.turn(request):
            yield update.answer, update.conversation_id
            if update.done and update.error:
                raise gr.Error(update.error, print_exception=False)
    except ChatError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


async def api_history(conversation_id: str) -> list[dict]:
    """The messages of a conversation: [{role, content, images, ...}]; [] for an unknown id."""
    try:
        return await service.history((conversation_id or "").strip())
    except (ChatError, HistoryUnavailable) as exc:
        raise gr.Error(str(exc), print_exception=False) from None


async def api_delete_conversation(conversation_id: str) -> str:
    """Delete a conversation and its messages."""
    cid = (conversation_id or "").strip()
    if not is_valid_id(cid):
        raise gr.Error(
            "That conversation id is not valid (32 hexadecimal characters).", print_exception=False
        )
    try:
        deleted = await (await service.store()).delete_conversation(cid)
    except HistoryUnavailable as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return (
        f"Deleted conversation {cid}." if deleted else f"No conversation {cid} (nothing deleted)."
    )


async def api_export_conversation(conversation_id: str, format: str = "json") -> str:
    """A conversation as JSON (images included, base64) or Markdown text."""
    cid = (conversation_id or "").strip()
    if not is_valid_id(cid):
        raise gr.Error(
            "That conversation id is not valid (32 hexadecimal characters).", print_exception=False
        )
    if format not in ("json", "markdown"):
        raise gr.Error('format must be "json" or "markdown".', print_exception=False)
    store = await service.store()
    if format == "markdown":
        text = await store.export_markdown(cid)
    else:
        data = await store.export_json(cid)
        text = json.dumps(data, ensure_ascii=False) if data is not None else None
    if text is None:
        raise gr.Error("No such conversation (it may have expired).", print_exception=False)
    return text


async def api_import_conversation(data: str) -> str:
    """Import a JSON export as a new conversation; returns its id."""
    try:
        return await import_conversation_text(data or "", None)
    except ValueError as exc:
        raise gr.Error(f"Import failed: {exc}", print_exception=False) from None


def api_roles() -> list[dict]:
    """The roles (personas): [{id, name, prompt}]."""
    return [role.public_info() for role in ROLES.values()]


def api_providers() -> list[dict]:
    """The providers: [{id, name, enabled, default_model, models, vision_models}]."""
    return [p.public_info() for p in providers.all()]


# -- layout and wiring ---------------------------------------------------------------------
PRIVATE = {"api_visibility": "private"}
CSS = """
#actions { align-items: center; gap: 8px; }
#status { font-size: 0.85em; opacity: 0.85; }
"""

with gr.Blocks(title="Multimodal Chat · 多模态对话", fill_height=True) as demo:
    browser = gr.BrowserState(
        {"browser_id": "", "conversation_id": ""},
        storage_key=STORAGE_KEY,
        secret=browser_secret(settings),
    )
    conversation_id = gr.State("")

    with gr.Sidebar(open=True, elem_id="sidebar"):
        gr.Markdown("### Conversations · 对话")
        new_chat_btn = gr.Button("＋ New chat · 新对话", elem_id="new-chat", variant="primary")
        conversations = gr.Radio(
            label="This browser's chats", choices=[], elem_id="conversations", show_label=False
        )
        with gr.Accordion("This chat · 当前对话", open=False, elem_id="chat-tools"):
            title = gr.Textbox(
                label="Title · 标题",
                elem_id="chat-title",
                max_lines=1,
                placeholder="Rename this chat, then press Enter",
            )
            export_btn = gr.Button("Export · 导出", size="sm", elem_id="export")
            exported = gr.File(
                label="Downloads",
                visible=False,
                elem_id="exported",
                file_count="multiple",
                interactive=False,
            )
            import_btn = gr.UploadButton(
                "Import JSON · 导入", file_types=[".json"], size="sm", elem_id="import"
            )
            delete_btn = gr.Button(
                "Delete this chat · 删除", size="sm", variant="stop", elem_id="delete-chat"
            )
        gr.Markdown(status_markdown(), elem_id="status")

    with gr.Row(equal_height=True):
        role = gr.Dropdown(role_choices(), value=DEFAULT_ROLE, label="Role · 角色", elem_id="role")
        provider = gr.Dropdown(
            provider_choices(),
            value=providers.default_id,
            label="Provider · 服务商",
            elem_id="provider",
        )
        model = gr.Dropdown(
            model_choices(providers.default_id),
            value=providers.get(providers.default_id).default_model,
            label="Model · 模型 (👁 sees images)",
            elem_id="model",
            allow_custom_value=True,
        )
    custom_prompt = gr.Textbox(
        label="Custom system prompt · 自定义系统提示词",
        lines=2,
        visible=False,
        elem_id="custom-prompt",
        placeholder="You are a… · 你是一位……",
    )
    chatbot = gr.Chatbot(
        elem_id="chatbot",
        label="Chat",
        show_label=False,
        buttons=["copy", "copy_all"],
        latex_delimiters=LATEX,
        scale=1,
        min_height=360,
        autoscroll=True,
        placeholder="**Ask anything**, or drop images here to talk about them.<br>"
        "问点什么吧，也可以拖入或粘贴图片。",
    )
    chat_input = gr.MultimodalTextbox(
        elem_id="chat-input",
        file_types=["image"],
        file_count="multiple",
        sources=["upload"],
        placeholder="Message… (Enter to send, Shift+Enter for a new line; paste or drop images)",
        show_label=False,
        autofocus=True,
        max_plain_text_length=settings.max_message_chars,
    )
    with gr.Row(elem_id="actions"):
        stop_btn = gr.Button(
            "■ Stop",
            elem_id="stop",
            visible=False,
            variant="stop",
            size="sm",
            scale=0,
            min_width=90,
        )
        retry_btn = gr.Button("↻ Retry", elem_id="retry", size="sm", scale=0, min_width=90)
        undo_btn = gr.Button("↶ Undo", elem_id="undo", size="sm", scale=0, min_width=90)
        detail = gr.Radio(
            # The label is not shown without a container: say it in the first choice.
            [("image detail: auto" if d == "auto" else d, d) for d in DETAILS],
            value="auto",
            label="Image detail · 图片精度",
            elem_id="detail",
            scale=0,
            min_width=320,
            container=False,
        )

    turn_inputs = [role, custom_prompt, provider, model, detail]
    turn_outputs = [chatbot, conversation_id, chat_input]
    idle_outputs = [chatbot, conversations, browser, chat_input, stop_btn, retry_btn, undo_btn]

    demo.load(
        on_load,
        [browser],
        [browser, conversation_id, chatbot, conversations, role, provider, model],
        **PRIVATE,
    )
    provider.change(on_provider_change, provider, model, **PRIVATE)
    role.change(on_role_change, role, custom_prompt, **PRIVATE)

    def wire_turn(trigger, fn, inputs):
        """A streaming turn: busy UI first, then the stream, then back to idle whatever happened."""
        started = trigger(
            lambda: busy(True),
            None,
            [chat_input, stop_btn, retry_btn, undo_btn],
            queue=False,
            **PRIVATE,
        )
        streaming = started.then(fn, inputs, turn_outputs, **PRIVATE)
        streaming.then(after_turn, [conversation_id, browser], idle_outputs, **PRIVATE)
        return streaming

    submitted = wire_turn(
        chat_input.submit, respond, [chat_input, conversation_id, *turn_inputs, browser]
    )
    retried = wire_turn(retry_btn.click, retry, [conversation_id, *turn_inputs])
    stop_btn.click(None, None, None, cancels=[submitted, retried], **PRIVATE)
    undo_btn.click(undo, conversation_id, [chatbot, chat_input], **PRIVATE).then(
        after_turn, [conversation_id, browser], idle_outputs, **PRIVATE
    )
    new_chat_btn.click(
        new_chat, browser, [chatbot, conversation_id, browser, conversations, chat_input], **PRIVATE
    )
    conversations.input(
        open_conversation,
        [conversations, browser],
        [chatbot, conversation_id, browser, role, provider, model],
        **PRIVATE,
    )
    conversation_id.change(show_current, conversation_id, [title, exported], **PRIVATE)
    title.submit(rename, [conversation_id, title, browser], conversations, **PRIVATE)
    export_btn.click(export_files, [conversation_id, browser], exported, **PRIVATE)
    import_btn.upload(
        import_file,
        [import_btn, browser],
        [chatbot, conversation_id, browser, conversations],
        **PRIVATE,
    )
    delete_btn.click(
        delete_current,
        [conversation_id, browser],
        [chatbot, conversation_id, browser, conversations],
        **PRIVATE,
    )

    # Public API: hidden components carry /chat's inputs so gradio_client uploads the images.
    with gr.Group(visible=False):
        api_message = gr.Textbox()
        api_images = gr.File(file_count="multiple", file_types=["image"])
        api_role = gr.Textbox(value=DEFAULT_ROLE)
        # A component's value is the API parameter's default (an empty value means required).
        api_provider, api_model = gr.Textbox(value=""), gr.Textbox(value="")
        api_cid, api_prompt = gr.Textbox(value=""), gr.Textbox(value="")
        api_detail = gr.Textbox(value="auto")
        api_reply, api_out_cid = gr.Textbox(), gr.Textbox()
        api_trigger = gr.Button()
    api_trigger.click(
        api_chat,
        [
            api_message,
            api_images,
            api_role,
            api_provider,
            api_model,
            api_cid,
            api_prompt,
            api_detail,
        ],
        [api_reply, api_out_cid],
        api_name="chat",
        api_description="Stream an answer; yields (reply_so_far, conversation_id).",
    )
    gr.api(api_history, api_name="history")
    gr.api(api_delete_conversation, api_name="delete_conversation")
    gr.api(api_export_conversation, api_name="export_conversation")
    gr.api(api_import_conversation, api_name="import_conversation")
    gr.api(api_roles, api_name="roles")
    gr.api(api_providers, api_name="providers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Multimodal streaming chat (Gradio).")
    parser.add_argument(
        "--host",
        help="interface to bind (default 127.0.0.1, or GRADIO_SERVER_NAME; 0.0.0.0 for all)",
    )
    parser.add_argument("--port", type=int, help="port (default 7860, or GRADIO_SERVER_PORT)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public *.gradio.live link (use with --auth)",
    )
    parser.add_argument("--auth", help="require a login, as user:password (or set APP_AUTH)")
    return parser.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth / APP_AUTH must look like user:password")
    return user, password


def launch_options(args: argparse.Namespace) -> dict:
    auth = parse_auth(args.auth or settings.app_auth)
    if args.share and not auth:
        log.warning(
            "Sharing a public link without --auth: anyone with the link can use "
            "your API keys. Add --auth user:password."
        )
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": args.share,
        "auth": auth,
        "max_threads": settings.max_threads,
        # Plain HTTP routes (seed-compatible /api/chat, /health) beside Gradio's, same port.
        "app_kwargs": {"routes": http_api.routes(service)},
        "enable_monitoring": False,
        "max_file_size": f"{int(settings.max_image_mb)}mb",
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    options = launch_options(args)
    if settings.redis_url:
        log.info("History: Redis")
    else:
        log.warning(
            "History: in memory (embedded fakeredis): conversations are lost on restart. "
            "Set REDIS_URL to keep them."
        )
    log.info(
        "Providers enabled: %s (default %s)",
        ", ".join(p.id for p in providers.enabled()),
        providers.default_id,
    )
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(
        theme=gr.themes.Default(primary_hue="indigo", secondary_hue="slate"), css=CSS, **options
    )


if __name__ == "__main__":
    sys.exit(main())
