"""The conversation side of the page: the sidebar (new chat, search, the list, import), the
open chat's header (title, pin, share, export, delete and its Undo), the read-only view of a
shared snapshot, and the wiring of their events to ui_conversations.ConversationHandlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

import accounts
import ui_list
import ui_options
from chat import ChatService
from ui_text import i18n

if TYPE_CHECKING:
    from ui import UI
    from ui_conversations import ConversationHandlers

PRIVATE: dict[str, Any] = {"api_visibility": "private"}


def sidebar(service: ChatService) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    with gr.Sidebar(open=True, elem_id="sidebar") as parts["sidebar"]:
        if accounts.hf_oauth_enabled():  # a Space with `hf_oauth: true`: the account's chats
            gr.LoginButton()
        gr.Markdown(i18n("conversations"))
        parts["new_chat_btn"] = gr.Button(i18n("new_chat"), elem_id="new-chat", variant="primary")
        parts["search"] = gr.Textbox(
            label=i18n("search"),
            show_label=False,
            placeholder=i18n("search_placeholder"),
            elem_id="conversation-search",
            max_lines=1,
            max_length=200,
            container=False,
        )
        parts["conversations"] = gr.HTML("", elem_id="conversations", js_on_load=ui_list.LIST_JS)
        parts["import_btn"] = gr.UploadButton(
            i18n("import"),  # type: ignore[arg-type]  # I18nData works; the hint says str
            file_types=[".json"],
            size="sm",
            elem_id="import",
        )
        gr.Markdown(ui_options.status_markdown(service), elem_id="status")
    return parts


def shared_view() -> dict[str, Any]:
    """What a shared link shows: the snapshot, read-only, and nothing of anyone's sidebar."""
    parts: dict[str, Any] = {}
    with gr.Column(visible=False, elem_id="shared-view") as parts["shared_view"]:
        parts["shared_title"] = gr.Markdown(elem_id="shared-title")
        parts["shared_chat"] = gr.Chatbot(
            elem_id="shared-chat",
            show_label=False,
            buttons=["copy", "copy_all"],
            allow_tags=False,
            min_height=360,
        )
    return parts


def chat_header() -> dict[str, Any]:
    """The open chat's title and menu, always in view above the chat."""
    small: dict[str, Any] = {"size": "sm", "scale": 0, "min_width": 80}
    parts: dict[str, Any] = {}
    with gr.Row(elem_id="chat-tools", equal_height=True):
        parts["title"] = gr.Textbox(
            label=i18n("title"),
            show_label=False,
            elem_id="chat-title",
            max_lines=1,
            placeholder=i18n("title_placeholder"),
            container=False,
            scale=1,
            min_width=160,
        )
        parts["pin_btn"] = gr.Button(i18n("pin"), elem_id="pin-chat", **small)
        parts["share_btn"] = gr.Button(i18n("share"), elem_id="share-chat", **small)
        parts["export_btn"] = gr.Button(i18n("export"), elem_id="export", **small)
        parts["delete_btn"] = gr.Button(
            i18n("delete"), variant="stop", elem_id="delete-chat", **small
        )
    parts["usage_total"] = gr.Markdown(elem_id="usage-total")
    with gr.Row(visible=False, elem_id="share-row", equal_height=True) as parts["share_row"]:
        parts["share_link"] = gr.Textbox(
            label=i18n("share_link"),
            elem_id="share-link",
            interactive=False,
            buttons=["copy"],
            scale=1,
        )
        parts["unshare_btn"] = gr.Button(i18n("unshare"), elem_id="unshare-chat", **small)
    parts["exported"] = gr.File(
        label=i18n("downloads"),
        visible=False,
        elem_id="exported",
        file_count="multiple",
        interactive=False,
    )
    with gr.Row(visible=False, elem_id="deleted-row", equal_height=True) as parts["deleted_row"]:
        parts["deleted_note"] = gr.Markdown(elem_id="deleted-note")
        parts["undo_delete_btn"] = gr.Button(i18n("undo_delete"), elem_id="undo-delete", **small)
    return parts


def wire(ui: UI, h: ConversationHandlers) -> None:
    """The list's and the header's events."""
    listed = {ui.browser, ui.search, ui.tz}
    opened = [
        ui.chatbot,
        ui.conversation_id,
        ui.browser,
        ui.conversations,
        ui.usage_total,
        ui.window,
    ]
    ui.new_chat_btn.click(h.new_chat, {ui.browser}, [*opened, ui.chat_input], **PRIVATE)
    # Typing filters the list (the last keystroke wins: earlier searches are dropped). On
    # .change, not .input: a pasted or IME-composed query (Chinese) fires no .input here.
    ui.search.change(
        h.search,
        {ui.conversation_id, *listed},
        ui.conversations,
        trigger_mode="always_last",
        show_progress="hidden",
        **PRIVATE,
    )
    ui.search.focus(h.warm_search, {ui.browser}, None, show_progress="hidden", **PRIVATE)
    ui.conversations.click(
        h.list_action,
        {ui.conversation_id, ui.tab_keys, *listed},
        [
            *opened,
            *h.settings_outputs,
            ui.exported,
            ui.share_row,
            ui.share_link,
            ui.pin_btn,
            *h.deleted_outputs,
        ],
        show_progress="hidden",
        **PRIVATE,
    ).then(None, ui.share_link, ui.share_link, js=ABSOLUTE_LINK_JS, **PRIVATE)
    ui.conversation_id.change(
        h.show_current,
        {ui.conversation_id},
        [ui.title, ui.exported, ui.share_row, ui.share_link, ui.pin_btn],
        **PRIVATE,
    ).then(None, ui.share_link, ui.share_link, js=ABSOLUTE_LINK_JS, **PRIVATE)
    ui.title.submit(h.rename, {ui.conversation_id, ui.title, *listed}, ui.conversations, **PRIVATE)
    ui.pin_btn.click(
        h.toggle_pin, {ui.conversation_id, *listed}, [ui.conversations, ui.pin_btn], **PRIVATE
    )
    ui.share_btn.click(
        h.share, {ui.conversation_id, ui.browser}, [ui.share_row, ui.share_link], **PRIVATE
    ).then(None, ui.share_link, ui.share_link, js=ABSOLUTE_LINK_JS, **PRIVATE)
    ui.unshare_btn.click(h.unshare, {ui.conversation_id, ui.browser}, ui.share_row, **PRIVATE)
    ui.export_btn.click(h.export_files, {ui.conversation_id, ui.browser}, ui.exported, **PRIVATE)
    ui.import_btn.upload(h.import_file, {ui.import_btn, *listed}, opened, **PRIVATE)
    ui.delete_btn.click(
        h.delete_current, {ui.conversation_id, *listed}, [*opened, *h.deleted_outputs], **PRIVATE
    )
    ui.undo_delete_btn.click(
        h.undo_delete,
        {ui.deleted, ui.tab_keys, *listed},
        [*opened, *h.settings_outputs, *h.deleted_outputs],
        **PRIVATE,
    )
    ui.undo_timer.tick(
        h.forget_deleted, {ui.deleted, ui.browser}, h.deleted_outputs, show_progress="hidden",
        **PRIVATE,
    )  # fmt: skip


# The share link is made a full address in the browser, from the page's own address: the
# server never builds one from a Host header it cannot trust.
ABSOLUTE_LINK_JS = """
(link) => {
  if (!link || !link.startsWith("/?")) return link;
  return window.location.href.split(/[?#]/)[0] + link.slice(1);
}
"""
