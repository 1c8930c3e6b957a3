"""The conversation list's events: open, new, rename, delete, export and import."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from chat import ChatError, ChatService
from config import Settings
from exports import ExportFiles
from history import HistoryUnavailable, is_valid_id
from http_guards import client_ip
from ui_state import HandlerBase, Update, browser_id_of, usage_line

if TYPE_CHECKING:
    from ui import UI


class ConversationHandlers(HandlerBase):
    def __init__(self, ui: UI, service: ChatService, settings: Settings, export_root: Path) -> None:
        super().__init__(ui, service, settings)
        # Exports live in Gradio's cache (so the File component can serve them), each in a
        # folder named by random bits; they expire and go when their conversation does.
        self.exports = ExportFiles(export_root)

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
            return gr.skip()
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
            return gr.skip()
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
            return gr.skip()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            gr.Warning(f"Import failed: {exc}")
            return gr.skip()
        gr.Info("Conversation imported.")
        messages = list(opened.messages) if opened else []
        shown = await self.service.display(cid, messages)
        listing = await self.conversation_list(browser_id, cid)
        return self._opened(browser_id, cid, shown, listing, usage_line(messages))
