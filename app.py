"""Gradio Blocks UI and public API: components wired to `chat.ChatService`.

Run `python app.py` (see --help), `gradio app.py` for reload mode, or deploy as a Space.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path

import gradio as gr
from gradio.data_classes import ListFiles
from pydantic import ValidationError
from starlette.middleware import Middleware

import gradio_tuning
import http_api
from chat import (
    STATUS_NOTES,
    ChatError,
    ChatService,
    TurnRequest,
    conversation_usage,
    display_answer,
    display_user,
)
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings, load_settings
from exports import ExportFiles
from history import HistoryUnavailable, app_secret_from_redis, is_valid_id, new_id
from images import DETAILS
from limits import (
    BodySizeLimit,
    SecurityHeaders,
    UnknownEndpoint,
    as_text,
    client_ip,
    max_body_bytes,
)
from markup import safe_markdown, unshown
from providers import Providers
from ui_text import I18N, i18n
from uploads import UploadLimits

log = logging.getLogger("app")
gradio_tuning.apply()  # before any Blocks, queue or session exists
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
providers = Providers(
    timeout_s=settings.provider_timeout_s, connect_timeout_s=settings.provider_connect_timeout_s
)
service = ChatService(settings, providers, image_dir=upload_dir() / "chat-images")


# -- choices for the dropdowns ------------------------------------------------------------
def role_choices() -> list[tuple[str, str]]:
    return [(role.name, role.id) for role in ROLES.values()] + [("Custom · 自定义", CUSTOM_ROLE)]


def provider_choices(keys: dict | None = None) -> list[tuple[str, str]]:
    """Enabled providers, plus those this user brought a key for."""
    own = user_keys(keys)
    return [
        (p.name if p.enabled else f"{p.name} (your key)", p.id)
        for p in providers.all()
        if p.enabled or p.id in own
    ]


def byok_providers() -> list:
    """Providers a user can enable with their own key (those with a key variable)."""
    return [p for p in providers.all() if p.key_env and p.base_url]


def model_choices(provider_id: str) -> list[tuple[str, str]]:
    provider = providers.get(provider_id)
    return [(f"{m} 👁" if provider.supports_vision(m) else m, m) for m in provider.models]


def status_markdown() -> str:
    # One translated key, first (the frontend translates one per string), then live data.
    store = i18n("status_redis" if settings.redis_url else "status_memory")
    enabled = ", ".join(p.name for p in providers.enabled())
    hints = "\n".join(f"- {p.name}: {p.hint}" for p in providers.all() if not p.enabled)
    more = (
        f"\n\n<details><summary>More providers · 更多服务商</summary>\n\n{hints}\n</details>"
        if hints
        else ""
    )
    return f"{store} {enabled}.{more}"


# -- UI handlers (private: the public API is below) ----------------------------------------
def browser_id_of(state: dict | None) -> str:
    browser_id = (state or {}).get("browser_id", "")
    return browser_id if is_valid_id(browser_id) else new_id()


async def conversation_list(browser_id: str, selected: str | None) -> gr.Radio:
    """The browser's conversations, newest first, with `selected` (None: none) chosen."""
    store = await service.store()
    items = await store.list_conversations(browser_id)
    choices = [(c.get("title") or "New chat", c["id"]) for c in items]
    return gr.Radio(choices=choices, value=selected)


async def on_load(state: dict | None, keys: dict | None, prompts: dict | None):
    """Give the browser its id and reopen the conversation it had open."""
    browser_id = browser_id_of(state)
    cid = (state or {}).get("conversation_id", "")
    try:
        store = await service.store()
        if not (cid and is_valid_id(cid) and await store.owns(browser_id, cid)):
            cid = ""
        shown = await service.display(cid)
        listing = await conversation_list(browser_id, cid or None)
    except HistoryUnavailable as exc:
        gr.Warning(str(exc))
        cid, shown, listing = "", [], gr.Radio(choices=[], value=None)
    meta = (await store.get_meta(cid) if cid else None) or {}
    state = {"browser_id": browser_id, "conversation_id": cid}
    return (
        state,
        cid,
        shown,
        listing,
        *settings_for(meta, keys),
        gr.Dropdown(choices=sorted(prompts or {}), value=None),
        user_keys(keys),  # remembered keys (if any) are this tab's keys too
        gr.Checkbox(value=bool(user_keys(keys))),
    )


def meta_number(meta: dict, name: str, default: float) -> float:
    try:
        return float(meta.get(name) or default)
    except ValueError:
        return default


def settings_for(meta: dict, keys: dict | None = None) -> tuple:
    """Role, provider, model and sampling as the conversation left them (or the defaults)."""
    role = meta.get("role") if meta.get("role") in {*ROLES, CUSTOM_ROLE} else DEFAULT_ROLE
    choices = provider_choices(keys)
    provider_id = meta.get("provider", "")
    if provider_id not in {pid for _, pid in choices}:
        provider_id = providers.default_id
    model = meta.get("model") or providers.get(provider_id).default_model
    return (
        gr.Dropdown(value=role),
        gr.Dropdown(choices=choices, value=provider_id),
        gr.Dropdown(choices=model_choices(provider_id), value=model),
        gr.Slider(value=meta_number(meta, "temperature", 0.7)),
        gr.Slider(value=meta_number(meta, "top_p", 1.0)),
        # An older conversation may have asked for more than MAX_OUTPUT_TOKENS now allows.
        gr.Number(value=min(int(meta_number(meta, "max_tokens", 0)), settings.max_output_tokens)),
    )


def save_keys(keys: dict | None, remember: bool, provider_id: str, *typed: str):
    """Use the typed keys in this tab; their providers become selectable for this user.

    Returns (this tab's keys, the keys remembered on this device, ...): with `remember` off
    nothing is written to the browser's storage, and what was remembered is removed."""
    kept = user_keys(keys)
    for spec, key in zip(byok_providers(), typed, strict=True):
        if (key or "").strip():
            kept[spec.id] = key.strip()
    where = "remembered on this device" if remember else "for this tab only"
    gr.Info(f"Using your keys ({where}) for: {', '.join(sorted(kept)) or 'none'}.")
    cleared = [
        gr.Textbox(value="", placeholder="saved ✓" if p.id in kept else "sk-…")
        for p in byok_providers()
    ]
    dropdown = gr.Dropdown(choices=provider_choices(kept), value=provider_id)
    return kept, remember_or_forget(kept, remember), dropdown, *cleared


def remember_or_forget(keys: dict | None, remember: bool) -> dict:
    """Ticking "remember" stores this tab's keys on the device; unticking removes them."""
    return user_keys(keys) if remember else {}


def forget_keys(provider_id: str):
    gr.Info("Your keys were removed from this tab and this device.")
    choices = provider_choices({})
    if provider_id not in {pid for _, pid in choices}:
        provider_id = providers.default_id
    cleared = [gr.Textbox(value="", placeholder="sk-…") for _ in byok_providers()]
    return {}, {}, gr.Dropdown(choices=choices, value=provider_id), *cleared


async def check_all(keys: dict | None, state: dict | None, http: gr.Request):
    """The provider check (as `python app.py --check`), with this user's keys too. It spends
    the server's keys, so it has its own budget (CHECKS_PER_MINUTE, per browser, per IP and
    global) and runs once at a time per browser; a raw queue call is refused the same way."""
    from check import check_providers, format_report

    browser_id, ip = browser_id_of(state), client_ip(http)
    try:
        await service.check_budget("checks", browser_id, ip)
        async with service.one_at_a_time(
            "checks", browser_id, ip, "A provider check is already running: wait for its result."
        ):
            results = await check_providers(
                providers, api_keys=user_keys(keys), for_operator=False
            )
    except ChatError as exc:
        gr.Warning(str(exc))
        return gr.skip()
    # Provider error text is shown as Markdown: made inert like any chat text.
    return safe_markdown(format_report(results))


def use_saved_prompt(name: str, prompts: dict | None) -> str:
    return (prompts or {}).get(name, gr.skip())


def save_prompt(name: str, prompt: str, prompts: dict | None):
    name, prompt = " ".join((name or "").split())[:60], (prompt or "").strip()
    if not name or not prompt:
        gr.Warning("Write a prompt and give it a name to save it.")
        return gr.skip(), gr.skip()
    saved = {**(prompts or {}), name: prompt}
    gr.Info(f"Saved “{name}” in this browser.")
    return saved, gr.Dropdown(choices=sorted(saved), value=name)


def on_provider_change(provider_id: str) -> gr.Dropdown:
    provider = providers.get(provider_id)
    return gr.Dropdown(choices=model_choices(provider_id), value=provider.default_model)


def on_role_change(role: str) -> gr.Group:
    return gr.Group(visible=role == CUSTOM_ROLE)


# Input, Stop, Retry, Undo and Compare while an answer streams (busy) or not (idle). These
# two run in the browser (js=True: Gradio transpiles them to JavaScript): on the server each
# property update rebuilds its component and JSON schema, ~1 ms apiece, ten per turn.


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


async def stream_into_chat(shown: list[dict], updates, state: dict, cid: str, failed_input=None):
    """Yield the turn's outputs (TURN_OUTPUTS) while `updates` streams, then, last, the
    stored conversation, the list and the usage (`after_turn`): one event per turn, not two.
    Problems become an inline notice + toast.

    Per update only the Chatbot should cost anything: the conversation id goes out only when
    it changes, and the other outputs are left alone (gr.skip(), free with gradio_tuning; a
    plain value such as None for the box would be postprocessed in a worker thread each time).
    """
    update, shown_now = None, None
    try:
        async for update in updates:
            answer = display_answer(
                update.answer,
                update.reasoning,
                status=update.status,
                error=update.error,
                streaming=not update.done,
                usage=update.usage if update.done else None,
            )
            shown_now = [*shown, *answer]
            new_cid = update.conversation_id if update.conversation_id != cid else gr.skip()
            cid = update.conversation_id or cid
            yield shown_now, new_cid, gr.skip(), *SKIP_REST
        if update is not None and update.error:
            gr.Warning(update.error)
    except ChatError as exc:
        gr.Warning(str(exc))
        shown_now = [*shown, *display_answer("", status="error", error=str(exc))]
        # The message goes back into the input box: nothing the user typed is lost.
        restored = (
            gr.MultimodalTextbox(value=failed_input) if failed_input else gr.MultimodalTextbox()
        )
        yield shown_now, gr.skip(), restored, *SKIP_REST
    if cid:
        stored, listing, state, usage = await after_turn(cid, state, shown_now)
        yield stored, gr.skip(), gr.skip(), listing, state, usage


# A streaming turn's outputs: chatbot, conversation_id, chat_input, then the list, the
# browser state and the usage, which only its last update sets.
TURN_OUTPUTS = ("chatbot", "conversation_id", "chat_input", "list", "browser", "usage")
SKIP_REST = (gr.skip(),) * 3  # the list, the browser state and the usage: left alone


def turn_options(
    role: str,
    prompt: str,
    provider: str,
    model: str,
    detail: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    keys: dict | None,
) -> TurnRequest:
    """The settings a turn is answered with, from the UI's controls."""
    return TurnRequest(
        role=role,
        system_prompt=prompt if role == CUSTOM_ROLE else "",
        provider=provider,
        model=model,
        detail=detail,
        temperature=float(temperature) if temperature is not None else None,
        top_p=float(top_p) if top_p is not None and float(top_p) < 1 else None,
        max_tokens=int(max_tokens) if max_tokens else None,
        api_keys=user_keys(keys),
    )


def user_keys(keys: dict | None) -> dict[str, str]:
    """The user's own keys (bring your own key), as this tab holds them."""
    return {pid: key for pid, key in (keys or {}).items() if isinstance(key, str) and key}


async def respond(message: dict, cid: str, state: dict, http: gr.Request, *options):
    text, files = (message or {}).get("text", ""), (message or {}).get("files", [])
    paths = [f if isinstance(f, str) else f.get("path", "") for f in files]
    try:
        shown = await service.display(cid)
    except HistoryUnavailable as exc:
        # Redis is down: nothing can be stored, so nothing is sent. The chat on screen stays
        # as it is (redrawing it would blank it) and the message stays in the box.
        gr.Warning(f"{exc} Your message was not sent; send it again.")
        yield (gr.skip(),) * len(TURN_OUTPUTS)  # a generator that never yields blanks them
        return
    except ChatError:
        shown = []
    shown += display_user(text, paths)
    yield shown, gr.skip(), None, *SKIP_REST  # empties the box: a plain value, no update
    request = turn_options(*options)
    request.text, request.images, request.conversation_id = text, paths, cid
    request.browser_id, request.client_ip = browser_id_of(state), client_ip(http)
    turn = service.turn(request)
    async for out in stream_into_chat(shown, turn, state, cid, failed_input=message):
        yield out


async def retry(cid: str, state: dict, http: gr.Request, *options, keep_previous: bool = False):
    """Answer the last message again: replacing the last answer, or beside it (compare)."""
    if not cid:
        gr.Info("Nothing to answer again yet: send a message first.")
        return
    try:
        shown = await service.display(cid)
    except (ChatError, HistoryUnavailable) as exc:
        gr.Warning(str(exc))  # a toast, not Gradio's error overlay over the chat
        return
    if not keep_previous:
        while shown and shown[-1]["role"] == "assistant":
            shown.pop()
    request = turn_options(*options)
    request.conversation_id, request.browser_id = cid, browser_id_of(state)
    request.client_ip = client_ip(http)
    updates = service.retry(request, keep_previous=keep_previous)
    async for out in stream_into_chat(shown, updates, state, cid):
        yield out


async def compare(cid: str, state: dict, http: gr.Request, *options):
    async for out in retry(cid, state, http, *options, keep_previous=True):
        yield out


def begin_edit(edited: gr.EditData):
    """The edit event's data (index, new text), kept for the streaming step that follows:
    Gradio gives event data only to the step the event itself triggers."""
    return {"index": edited.index, "value": edited.value}


async def edit(edited: dict | None, cid: str, state: dict, http: gr.Request, *options):
    """The user edited one of their messages in the chat: answer again from there."""
    if not cid or not edited:
        return
    messages = await service.history(cid)
    shown, positions = await service.display_indexed(cid, messages)
    index = edited["index"] if isinstance(edited["index"], int) else edited["index"][0]
    if not 0 <= index < len(positions):
        return
    value = edited["value"]
    text = value if isinstance(value, str) else str(value or "")
    position = positions[index]
    # The edit box started from the displayed text, which markup.py made safe: undo its marks.
    stored = messages[position].get("content") if 0 <= position < len(messages) else ""
    text = unshown(text, stored if isinstance(stored, str) else "")
    kept = [m for m, p in zip(shown, positions, strict=True) if p < position]
    user = [m for m, p in zip(shown, positions, strict=True) if p == position][:1]
    if user:
        user[0]["content"] = [
            part if part.get("type") != "text" else {**part, "text": safe_markdown(text)}
            for part in user[0]["content"]
        ]
    request = turn_options(*options)
    request.text, request.conversation_id = text, cid
    request.browser_id, request.client_ip = browser_id_of(state), client_ip(http)
    async for out in stream_into_chat([*kept, *user], service.edit(request, position), state, cid):
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


def message_text(message: object) -> str:
    """The text of a Chatbot message as a handler receives it (dict or ChatMessage)."""
    content = message.get("content") if isinstance(message, dict) else None
    content = getattr(message, "content", content)
    parts = content if isinstance(content, list) else [content]
    texts = [p.get("text", "") if isinstance(p, dict) else p for p in parts]
    return "".join(t for t in texts if isinstance(t, str))


def unsaved_notice(shown_now: list | None, stored: list[dict]) -> list[dict]:
    """A refusal's inline notice (rate limit, Redis down...): nothing was stored, so redrawing
    the stored conversation would wipe it; it is kept under the conversation instead."""
    last = (shown_now or [None])[-1]
    text = message_text(last) if last else ""
    refused = text.startswith(f"**{STATUS_NOTES['error']}:**")
    if not refused or (stored and message_text(stored[-1]) == text):
        return []
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


async def after_turn(cid: str, state: dict, shown_now: list | None = None):
    """After a turn (finished, failed or stopped): the stored truth, the list, an idle input."""
    browser_id = browser_id_of(state)
    state = {"browser_id": browser_id, "conversation_id": cid}
    try:
        messages = await service.history(cid) if cid else []
        shown = await service.display(cid, messages) if cid else gr.skip()
        if cid:
            shown += unsaved_notice(shown_now, shown)
            if shown == shown_now:
                shown = gr.skip()  # the browser shows exactly this already: not sent again
        listing = await conversation_list(browser_id, cid or None)
        usage = await usage_markdown(cid, messages)
    except (ChatError, HistoryUnavailable) as exc:
        gr.Warning(str(exc))
        shown, listing, usage = gr.skip(), gr.skip(), gr.skip()
    return shown, listing, state, usage


async def usage_markdown(cid: str, messages: list[dict] | None = None) -> str:
    if messages is None:
        messages = await service.history(cid) if cid else []
    line = conversation_usage(messages)
    return f"**Usage · 用量:** {line}" if line else ""


async def open_conversation(cid: str, state: dict, keys: dict | None):
    browser_id = browser_id_of(state)
    store = await service.store()
    if not cid or not await store.owns(browser_id, cid):
        return (gr.skip(),) * 9
    meta = await store.get_meta(cid) or {}
    state = {"browser_id": browser_id, "conversation_id": cid}
    return (await service.display(cid), cid, state, *settings_for(meta, keys))


def new_chat(state: dict):
    state = {"browser_id": browser_id_of(state), "conversation_id": ""}
    return [], "", state, gr.Radio(value=None), gr.MultimodalTextbox(value=None)


async def delete_current(cid: str, state: dict):
    browser_id = browser_id_of(state)
    store = await service.store()
    if cid and await store.owns(browser_id, cid):
        await store.delete_conversation(cid)
        await asyncio.to_thread(exports.forget, cid)
        gr.Info("Conversation deleted.")
    listing = await conversation_list(browser_id, None)
    state = {"browser_id": browser_id, "conversation_id": ""}
    return [], "", state, listing


def title_of(meta: dict | None) -> str:
    return (meta or {}).get("title", "")


async def show_current(cid: str):
    """The open conversation's title; previous exports are hidden."""
    meta = await (await service.store()).get_meta(cid) if cid else None
    usage = await usage_markdown(cid) if meta else ""
    return gr.Textbox(value=title_of(meta)), gr.File(value=None, visible=False), usage


async def rename(cid: str, new_title: str, state: dict):
    browser_id = browser_id_of(state)
    title = " ".join((new_title or "").split())[:80]
    store = await service.store()
    if not (cid and title and await store.owns(browser_id, cid)):
        return gr.skip()
    await store.update_meta(cid, title=title)
    gr.Info(f"Renamed to “{title}”.")
    return await conversation_list(browser_id, cid)


# Exports live in Gradio's cache (so the File component can serve them), each in a folder
# named by random bits, expire after a while and go when their conversation is deleted.
exports = ExportFiles(upload_dir() / "chat-exports")


async def export_files(cid: str, state: dict):
    """Markdown and JSON (with images) files of the open conversation, for download."""
    store = await service.store()
    if not (cid and await store.owns(browser_id_of(state), cid)):
        gr.Info("Send a message first: there is nothing to export yet.")
        return gr.File(visible=False)
    meta = await store.get_meta(cid) or {}
    data = await store.export_json(cid)
    markdown = await store.export_markdown(cid)
    # In a worker thread: with images an export is megabytes to encode and write, which on
    # the event loop would stall every other user's stream meanwhile.
    files = await asyncio.to_thread(
        exports.write, cid, title_of(meta), markdown or "", data
    )
    return gr.File(value=files, visible=True)


async def import_file(file: str | None, state: dict, http: gr.Request):
    """A JSON export becomes a new conversation of this browser, and is opened."""
    browser_id = browser_id_of(state)
    try:
        text = await asyncio.to_thread(Path(file).read_text, encoding="utf-8")  # off the loop
        cid = await service.import_conversation(text, browser_id, client_ip(http))
    except (ChatError, HistoryUnavailable) as exc:  # a budget, the storage quota, Redis
        gr.Warning(str(exc))
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        gr.Warning(f"Import failed: {exc}")
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    gr.Info("Conversation imported.")
    listing = await conversation_list(browser_id, cid)
    state = {"browser_id": browser_id, "conversation_id": cid}
    return await service.display(cid), cid, state, listing


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
    http: gr.Request | None = None,
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
        conversation_id=as_text(conversation_id),
        client_ip=client_ip(http),  # an API caller has no browser: limited by its address
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
        return await service.history(as_text(conversation_id))
    except (ChatError, HistoryUnavailable) as exc:
        raise gr.Error(str(exc), print_exception=False) from None


async def api_delete_conversation(conversation_id: str) -> str:
    """Delete a conversation and its messages."""
    cid = as_text(conversation_id)
    if not is_valid_id(cid):
        raise gr.Error(
            "That conversation id is not valid (32 hexadecimal characters).", print_exception=False
        )
    try:
        deleted = await (await service.store()).delete_conversation(cid)
    except HistoryUnavailable as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    await asyncio.to_thread(exports.forget, cid)
    return (
        f"Deleted conversation {cid}." if deleted else f"No conversation {cid} (nothing deleted)."
    )


async def api_export_conversation(conversation_id: str, format: str = "json") -> str:
    """A conversation as JSON (images included, base64) or Markdown text."""
    cid = as_text(conversation_id)
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


async def api_import_conversation(data: str, http: gr.Request | None = None) -> str:
    """Import a JSON export as a new conversation; returns its id."""
    try:  # no browser: limited and charged by the caller's address
        return await service.import_conversation(as_text(data), None, client_ip(http))
    except ChatError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except ValueError as exc:
        raise gr.Error(f"Import failed: {exc}", print_exception=False) from None
    except HistoryUnavailable as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def api_roles() -> list[dict]:
    """The roles (personas): [{id, name, prompt}]."""
    return [role.public_info() for role in ROLES.values()]


def api_providers() -> list[dict]:
    """The providers: [{id, name, enabled, default_model, models, vision_models}]."""
    return [p.public_info() for p in providers.all()]


def strict_file_list(files: gr.File) -> gr.File:
    """/chat's `images` input: a gr.File (gradio_client uploads handle_file() values) that
    refuses junk (images=5, a bare path string) with a clear gr.Error; Gradio's own check
    fails with a generic "the app raised an exception" and a traceback in the log.

    Patched on the instance: a gr.File subclass would make Gradio write an app.pyi stub."""
    files.api_info()  # cached now, from ListFiles: the API still says "list of files"
    files.data_model = None  # validated below instead, where a gr.Error reaches the caller
    preprocess = files.preprocess

    def checked(payload: object) -> object:
        if payload is None or payload == []:
            return None
        try:
            listed = ListFiles.model_validate(payload, context={"validate_meta": True})
        except ValidationError:
            raise gr.Error(
                "images must be a list of uploaded image files: pass each one as "
                "handle_file(path) with gradio_client.",
                print_exception=False,
            ) from None
        return preprocess(listed)

    files.preprocess = checked
    return files


# -- layout and wiring ---------------------------------------------------------------------
PRIVATE = {"api_visibility": "private"}
# A step Gradio runs in the browser (transpiled to JavaScript; no inputs, properties only).
# No progress display: Gradio's would stay on its outputs, spinning, after the step is done.
IN_BROWSER = {"js": True, "show_progress": "hidden", **PRIVATE}
CSS = """
#actions { align-items: center; gap: 8px; }
#status { font-size: 0.85em; opacity: 0.85; }
/* Images in the chat are previews (a click opens them full screen), not a wall of pixels. */
#chatbot .image-frame img { max-height: 180px; width: auto; max-width: 100%; object-fit: contain; }
/* The conversation list: one title per line, and no empty box before the first chat. */
#conversations:not(:has(label)) { display: none; }
#conversations .wrap { flex-direction: column; gap: 4px; }
#conversations label { width: 100%; }
#conversations label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
@media (max-width: 767px) {
  #chatbot { min-height: 52vh !important; }
  #chatbot .image-frame img { max-height: 140px; }
  #actions { flex-wrap: wrap; }
}
"""
# Phones: the sidebar would cover the whole chat, so it starts closed there, and picking a
# conversation (or New chat) closes it again. Runs once on page load (launch(js=...)).
NARROW_SCREEN_JS = """
() => {
  const narrow = () => window.innerWidth < 768;
  // True once it clicked: the sidebar gets its "open" class a moment after it mounts.
  const close = () => {
    const bar = document.querySelector('#sidebar');
    if (!bar || !bar.classList.contains('open')) return false;
    bar.querySelector('.toggle-button')?.click();
    return true;
  };
  if (narrow()) {
    let tries = 0;
    const timer = setInterval(() => { if (close() || ++tries > 100) clearInterval(timer); }, 50);
  }
  document.addEventListener('click', (event) => {
    if (narrow() && event.target.closest('#conversations label, #new-chat')) {
      setTimeout(close, 150);
    }
  });
}
"""
# Shown in the empty chat; a click puts the example into the input box (Enter sends it).
EXAMPLES = [
    {
        "text": "What is in this picture? Describe its colours and mood.",
        "files": [str(Path(__file__).resolve().parent / "examples" / "sunset.jpg")],
        "display_text": "🖼️ What is in this picture?",
    },
    {"text": "用简单的话解释什么是量子纠缠，再举一个生活中的类比。"},
    {
        "text": "Write a Python function that checks whether a string is a palindrome, "
        "ignoring case and punctuation, with a few tests.",
        "display_text": "💻 Python: a palindrome check, with tests",
    },
    {"text": "Solve step by step: $x^2 - 5x + 6 = 0$", "display_text": "➗ Solve x² − 5x + 6 = 0"},
]


def use_example(evt: gr.SelectData) -> gr.MultimodalTextbox:
    example = evt.value if isinstance(evt.value, dict) else {}
    files = [f.get("path") if isinstance(f, dict) else f for f in example.get("files") or []]
    return gr.MultimodalTextbox(value={"text": example.get("text", ""), "files": files})


SECRET = browser_secret(settings)

# Gradio deletes this app's uploads and cached files after UPLOAD_MAX_AGE_HOURS (uploads.py).
# The example image is served from examples/ as a static file instead of a cached copy, which
# that cleanup would delete after a day of uptime (the example would then show broken).
UPLOAD_MAX_AGE_S = int(settings.upload_max_age_hours * 3600)
gr.set_static_paths([Path(__file__).resolve().parent / "examples"])
with gr.Blocks(
    title="Multimodal Chat · 多模态对话",
    fill_height=True,
    delete_cache=(min(3600, UPLOAD_MAX_AGE_S), UPLOAD_MAX_AGE_S),
) as demo:
    browser = gr.BrowserState(
        {"browser_id": "", "conversation_id": ""},
        storage_key=STORAGE_KEY,
        secret=SECRET,
    )
    # The user's own API keys: `tab_keys` holds them for this page only (the server's memory
    # of this session, gone on reload); `remembered_keys` is the browser's localStorage,
    # written only when the user asks to be remembered. BrowserState's encryption key is
    # sent to the page, so that storage is readable by anything that can read localStorage.
    tab_keys = gr.State({})
    remembered_keys = gr.BrowserState({}, storage_key=f"{STORAGE_KEY}-keys", secret=SECRET)
    prompts_state = gr.BrowserState({}, storage_key=f"{STORAGE_KEY}-prompts", secret=SECRET)
    conversation_id = gr.State("")

    with gr.Sidebar(open=True, elem_id="sidebar"):
        gr.Markdown(i18n("conversations"))
        new_chat_btn = gr.Button(i18n("new_chat"), elem_id="new-chat", variant="primary")
        conversations = gr.Radio(
            label="This browser's chats", choices=[], elem_id="conversations", show_label=False
        )
        with gr.Accordion(i18n("this_chat"), open=False, elem_id="chat-tools"):
            title = gr.Textbox(
                label=i18n("title"),
                elem_id="chat-title",
                max_lines=1,
                placeholder=i18n("title_placeholder"),
            )
            export_btn = gr.Button(i18n("export"), size="sm", elem_id="export")
            exported = gr.File(
                label=i18n("downloads"),
                visible=False,
                elem_id="exported",
                file_count="multiple",
                interactive=False,
            )
            import_btn = gr.UploadButton(
                i18n("import"), file_types=[".json"], size="sm", elem_id="import"
            )
            delete_btn = gr.Button(i18n("delete"), size="sm", variant="stop", elem_id="delete-chat")
            usage_total = gr.Markdown(elem_id="usage-total")
        gr.Markdown(status_markdown(), elem_id="status")

    with gr.Row(equal_height=True):
        role = gr.Dropdown(role_choices(), value=DEFAULT_ROLE, label=i18n("role"), elem_id="role")
        provider = gr.Dropdown(
            provider_choices(),
            value=providers.default_id,
            label=i18n("provider"),
            elem_id="provider",
        )
        model = gr.Dropdown(
            model_choices(providers.default_id),
            value=providers.get(providers.default_id).default_model,
            label=i18n("model"),
            elem_id="model",
            allow_custom_value=True,
        )
    with gr.Group(visible=False) as custom_group:
        custom_prompt = gr.Textbox(
            label=i18n("custom_prompt"),
            lines=2,
            elem_id="custom-prompt",
            placeholder=i18n("custom_prompt_placeholder"),
        )
        with gr.Row(equal_height=True):
            saved_prompt = gr.Dropdown(
                [], label="Saved prompts · 已保存", elem_id="saved-prompts", scale=2
            )
            prompt_name = gr.Textbox(
                label="Save as · 保存为", placeholder="Name", elem_id="prompt-name", scale=2
            )
            save_prompt_btn = gr.Button("Save · 保存", elem_id="save-prompt", scale=1)
    chatbot = gr.Chatbot(
        elem_id="chatbot",
        label=i18n("chat"),
        examples=EXAMPLES,
        show_label=False,
        buttons=["copy", "copy_all"],
        latex_delimiters=LATEX,
        allow_tags=False,  # custom tags are not kept: messages go through markup.safe_markdown
        editable="user",
        scale=1,
        min_height=360,
        autoscroll=True,
        placeholder=i18n("chat_placeholder"),
    )
    chat_input = gr.MultimodalTextbox(
        elem_id="chat-input",
        file_types=["image"],
        file_count="multiple",
        sources=["upload"],
        placeholder=i18n("input_placeholder"),
        show_label=False,
        autofocus=True,
        max_plain_text_length=settings.max_message_chars,
        # Enabled when the page's load event has given this browser its id: a message sent
        # before that went under a second, throwaway id and never showed in the sidebar.
        interactive=False,
    )
    with gr.Row(elem_id="actions"):
        stop_btn = gr.Button(
            i18n("stop"),
            elem_id="stop",
            visible=False,
            variant="stop",
            size="sm",
            scale=0,
            min_width=90,
        )
        retry_btn = gr.Button(i18n("retry"), elem_id="retry", size="sm", scale=0, min_width=90)
        undo_btn = gr.Button(i18n("undo"), elem_id="undo", size="sm", scale=0, min_width=90)
        compare_btn = gr.Button(
            i18n("compare"),
            elem_id="compare",
            size="sm",
            scale=0,
            min_width=110,
        )
        detail = gr.Radio(
            # The label is not shown without a container: say it in the first choice.
            [("image detail: auto" if d == "auto" else d, d) for d in DETAILS],
            value="auto",
            label=i18n("detail"),
            elem_id="detail",
            scale=0,
            min_width=320,
            container=False,
        )

    with gr.Accordion(i18n("settings"), open=False, elem_id="settings"):
        with gr.Row():
            temperature = gr.Slider(
                0, 2, value=0.7, step=0.1, label="Temperature · 温度", elem_id="temperature"
            )
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
            max_tokens = gr.Number(
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
            key_boxes = [
                gr.Textbox(
                    label=f"{p.name} ({p.key_env})",
                    type="password",
                    elem_id=f"key-{p.id}",
                    placeholder="sk-…",
                    min_width=220,
                )
                for p in byok_providers()
            ]
        with gr.Row():
            remember_keys = gr.Checkbox(
                value=False,
                label="Remember on this device · 在此设备上记住",
                elem_id="remember-keys",
                min_width=220,
            )
            save_keys_btn = gr.Button("Use my keys · 使用", elem_id="save-keys", size="sm")
            forget_keys_btn = gr.Button("Forget my keys · 清除", elem_id="forget-keys", size="sm")
            check_btn = gr.Button("Check providers · 检查", elem_id="check-providers", size="sm")
        check_result = gr.Markdown(elem_id="check-result")

    turn_inputs = [
        role,
        custom_prompt,
        provider,
        model,
        detail,
        temperature,
        top_p,
        max_tokens,
        tab_keys,
    ]
    idle_outputs = [chatbot, conversations, browser, usage_total]  # after_turn's
    turn_outputs = [chatbot, conversation_id, chat_input, conversations, browser, usage_total]
    settings_outputs = [role, provider, model, temperature, top_p, max_tokens]

    demo.load(
        on_load,
        [browser, remembered_keys, prompts_state],
        [
            browser,
            conversation_id,
            chatbot,
            conversations,
            *settings_outputs,
            saved_prompt,
            tab_keys,
            remember_keys,
        ],
        **PRIVATE,
    ).then(enable_input, None, chat_input, **IN_BROWSER).then(
        None, js="() => document.querySelector('#chat-input textarea')?.focus()", **PRIVATE
    )
    provider.change(on_provider_change, provider, model, **PRIVATE)
    role.change(on_role_change, role, custom_group, **PRIVATE)
    saved_prompt.input(use_saved_prompt, [saved_prompt, prompts_state], custom_prompt, **PRIVATE)
    save_prompt_btn.click(
        save_prompt,
        [prompt_name, custom_prompt, prompts_state],
        [prompts_state, saved_prompt],
        **PRIVATE,
    )
    save_keys_btn.click(
        save_keys,
        [tab_keys, remember_keys, provider, *key_boxes],
        [tab_keys, remembered_keys, provider, *key_boxes],
        **PRIVATE,
    )
    forget_keys_btn.click(
        forget_keys, provider, [tab_keys, remembered_keys, provider, *key_boxes], **PRIVATE
    )
    remember_keys.input(remember_or_forget, [tab_keys, remember_keys], remembered_keys, **PRIVATE)
    # At most two checks at once in this process, whoever asks (each spends the server's keys).
    check_btn.click(
        check_all,
        [tab_keys, browser],
        check_result,
        concurrency_limit=2,
        concurrency_id="provider-check",
        **PRIVATE,
    )

    busy_outputs = [chat_input, stop_btn, retry_btn, undo_btn, compare_btn]

    def wire_turn(trigger, fn, inputs, capture=None):
        """A streaming turn: busy UI first (in the browser), then the stream, whose last
        update is the stored truth, then idle UI. `capture` keeps the event's data (only the
        first step gets it)."""
        if capture:
            started = trigger(capture, None, edit_data, queue=False, **PRIVATE)
            started = started.then(show_busy, None, busy_outputs, **IN_BROWSER)
        else:
            started = trigger(show_busy, None, busy_outputs, **IN_BROWSER)
        streaming = started.then(fn, inputs, turn_outputs, **PRIVATE)
        streaming.then(show_idle, None, busy_outputs, **IN_BROWSER)
        return streaming

    edit_data = gr.State(None)
    submitted = wire_turn(
        chat_input.submit, respond, [chat_input, conversation_id, browser, *turn_inputs]
    )
    retried = wire_turn(retry_btn.click, retry, [conversation_id, browser, *turn_inputs])
    compared = wire_turn(compare_btn.click, compare, [conversation_id, browser, *turn_inputs])
    edited = wire_turn(
        chatbot.edit, edit, [edit_data, conversation_id, browser, *turn_inputs], begin_edit
    )
    # A stopped stream never reaches its last update: show what was stored instead.
    stop_btn.click(
        None, None, None, cancels=[submitted, retried, compared, edited], **PRIVATE
    ).then(after_turn, [conversation_id, browser], idle_outputs, **PRIVATE).then(
        show_idle, None, busy_outputs, **IN_BROWSER
    )
    undo_btn.click(undo, conversation_id, [chatbot, chat_input], **PRIVATE).then(
        after_turn, [conversation_id, browser], idle_outputs, **PRIVATE
    )
    new_chat_btn.click(
        new_chat, browser, [chatbot, conversation_id, browser, conversations, chat_input], **PRIVATE
    )
    chatbot.example_select(use_example, None, chat_input, **PRIVATE)
    conversations.input(
        open_conversation,
        [conversations, browser, tab_keys],
        [chatbot, conversation_id, browser, *settings_outputs],
        **PRIVATE,
    )
    conversation_id.change(show_current, conversation_id, [title, exported, usage_total], **PRIVATE)
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
        api_images = strict_file_list(gr.File(file_count="multiple", file_types=["image"]))
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
        # The outputs are plain strings already; Textbox.postprocess would only hand each
        # update to a worker thread and back (~0.14 ms per update).
        postprocess=False,
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="test every enabled provider (reachable, key, model, reply, image), print a "
        "table with fixes and exit: 0 when all passed, 1 otherwise",
    )
    return parser.parse_args(argv)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth / APP_AUTH must look like user:password")
    return user, password


def launch_options(args: argparse.Namespace) -> dict:
    from client_address import CrossSiteGuard, LoginThrottle

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
        # Gradio API bodies are capped before they are read (a 500 MB "message" is refused
        # with a 413, not parsed); uploads keep Gradio's own max_file_size below. Every page
        # gets a CSP refusing remote images and form posts elsewhere; an unknown API name gets
        # a 404 instead of a 500 and a traceback (see limits.py). Failed logins are throttled
        # per client address; with a login, POSTs from other sites are refused
        # (client_address.py).
        "app_kwargs": {
            "routes": http_api.routes(service),
            "middleware": [
                Middleware(SecurityHeaders),
                Middleware(LoginThrottle),
                Middleware(CrossSiteGuard),
                Middleware(UnknownEndpoint),
                Middleware(BodySizeLimit, max_bytes=max_body_bytes(settings.max_message_chars)),
                # Uploads: per address and global budgets, disk total, old files (uploads.py).
                Middleware(
                    UploadLimits,
                    service=service,
                    upload_dir=upload_dir(),
                    max_disk_bytes=int(settings.max_upload_disk_mb * 1024 * 1024),
                    max_age_s=settings.upload_max_age_hours * 3600,
                    # a message's images in one request, plus the multipart overhead
                    max_request_bytes=settings.max_images_per_message * settings.max_image_bytes
                    + 1024 * 1024,
                ),
            ],
        },
        "enable_monitoring": False,
        # Gradio's run history would keep every call's inputs (a user's own API key among
        # them) in the browser's storage, and offers to copy them to a Hub bucket: off.
        "run_history": False,
        # In bytes: "0mb" from int(MAX_IMAGE_MB=0.5) would refuse every upload.
        "max_file_size": settings.max_image_bytes,
    }


def trust_client_addresses(args: argparse.Namespace) -> None:
    """Client addresses come from client_address.py (X-Forwarded-For only from the proxies
    in TRUSTED_PROXIES / TRUSTED_PROXY_HOPS, right-most first). Uvicorn's own rewrite is
    switched off through the setting it reads: told to trust `*` it takes the LEFT-most
    entry, which any client can forge."""
    import client_address

    if os.environ.get("FORWARDED_ALLOW_IPS", "").strip():
        log.warning(
            "FORWARDED_ALLOW_IPS is ignored: it let clients forge their address. Name the "
            "proxies in front in TRUSTED_PROXIES (IPs or networks; default loopback) or "
            "their number in TRUSTED_PROXY_HOPS."
        )
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    trust = client_address.configure(settings, share=args.share)
    log.info("Client addresses: X-Forwarded-For trusted from %s", trust.describe())


def main(argv: list[str] | None = None) -> int | None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request URL at INFO: provider URLs may carry credentials, and a line
    # per streamed request is noise next to our own one line per turn.
    for name in ("httpx", "httpx2"):  # openai's client logs through either, by version
        logging.getLogger(name).setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.check:  # before launch: the check prints its table and exits
        import check

        return check.cli(providers)
    trust_client_addresses(args)
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
        theme=gr.themes.Default(primary_hue="indigo", secondary_hue="slate"),
        css=CSS,
        js=NARROW_SCREEN_JS,
        i18n=I18N,
        **options,
    )


if __name__ == "__main__":
    sys.exit(main())
