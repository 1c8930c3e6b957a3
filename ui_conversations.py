"""The conversation list's and the chat header's events: open, new, search, rename, pin,
share, export, import, and delete with Undo."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

import ui_list
from chat import ChatError, ChatService
from config import Settings
from exports import ExportFiles
from history import HistoryUnavailable, is_valid_id
from http_guards import client_ip
from markup_text import safe_markdown
from ui_state import (
    UNDO_DELETE_SECONDS,
    HandlerBase,
    Update,
    browser_id_of,
    browser_value,
    usage_line,
)
from ui_text import i18n

if TYPE_CHECKING:
    from ui import UI


class ConversationHandlers(HandlerBase):
    def __init__(self, ui: UI, service: ChatService, settings: Settings, export_root: Path) -> None:
        super().__init__(ui, service, settings)
        # Exports live in Gradio's cache (so the File component can serve them), each in a
        # folder named by random bits; they expire and go when their conversation does.
        self.exports = ExportFiles(export_root)
        self.deleted_outputs = [ui.deleted_row, ui.deleted_note, ui.deleted, ui.undo_timer]

    def _opened(
        self, data: dict, browser_id: str, cid: str, shown: Any, listing: Any, usage: str
    ) -> Update:
        ui = self.ui
        return {
            ui.chatbot: shown,
            ui.conversation_id: cid,
            ui.browser: browser_value(data[ui.browser], browser_id, cid),
            ui.conversations: listing,
            ui.usage_total: usage,
            ui.window: self.service.display_limit,
        }

    async def _listing(self, data: dict, selected: str | None) -> str:
        ui = self.ui
        browser_id = browser_id_of(data[ui.browser])
        return await self.conversation_list(browser_id, selected, data[ui.search], data[ui.tz])

    # -- open, new, search ----------------------------------------------------------------
    async def open_conversation(self, data: dict, cid: str) -> Update:
        ui = self.ui
        browser_id = browser_id_of(data[ui.browser])
        opened = await self.service.open(browser_id, cid) if is_valid_id(cid or "") else None
        if opened is None:
            gr.Info("That chat is no longer available. · 该对话已不存在。")
            return {ui.conversations: await self._listing(data, data[ui.conversation_id])}
        return {
            **self._opened(
                data,
                browser_id,
                cid,
                await self.chat_value(cid, opened.messages),
                await self._listing(data, cid),
                usage_line(opened.messages),
            ),
            **self.settings_for(opened.meta, data[ui.tab_keys]),
        }

    async def new_chat(self, data: dict) -> Update:
        browser_id = browser_id_of(data[self.ui.browser])
        listing = await self.conversation_list(browser_id, None)
        return {
            **self._opened(data, browser_id, "", [], listing, ""),
            self.ui.chat_input: gr.MultimodalTextbox(value=None),
        }

    async def search(self, data: dict, http: gr.Request) -> Update:
        """The list filtered by what is typed in the search box (titles and messages)."""
        ui = self.ui
        try:
            if (data[ui.search] or "").strip():
                browser_id = browser_id_of(data[ui.browser])
                await self.service.check_budget("searches", browser_id, client_ip(http))
            return {ui.conversations: await self._listing(data, data[ui.conversation_id])}
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
            return gr.skip()

    async def warm_search(self, data: dict, http: gr.Request) -> None:
        """The search box got the focus: read what a search will read, so that the first
        keystroke's answer is a warm one (counted as one search)."""
        browser_id = browser_id_of(data[self.ui.browser])
        try:
            await self.service.check_budget("searches", browser_id, client_ip(http))
            await (await self.service.store()).warm_search(browser_id)
        except (ChatError, HistoryUnavailable):
            pass  # the search itself will say what is wrong

    async def list_action(self, data: dict, event: gr.EventData) -> Update:
        """A click in the list: {action, id} from the page's script, checked here."""
        action = getattr(event, "_data", None) or {}
        name, cid = action.get("action"), action.get("id")
        if name not in ui_list.ACTIONS or not isinstance(cid, str) or not is_valid_id(cid):
            return gr.skip()
        browser_id = browser_id_of(data[self.ui.browser])
        try:
            if not await (await self.service.store()).owns(browser_id, cid):
                return {self.ui.conversations: await self._listing(data, None)}
            if name in ("pin", "unpin"):
                return await self._set_pin(data, cid, name == "pin")
            if name == "delete":
                return await self._delete(data, cid)
            update = await self.open_conversation(data, cid)
            if name == "export":
                update |= await self.export_files({**data, self.ui.conversation_id: cid})
            elif name == "share":
                update |= await self.share({**data, self.ui.conversation_id: cid})
            return update
        except HistoryUnavailable as exc:
            gr.Warning(str(exc))
            return gr.skip()

    async def show_current(self, data: dict) -> Update:
        """The open conversation's title and pin; previous exports and links are hidden."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        meta = await (await self.service.store()).get_meta(cid) if cid else None
        pinned = (meta or {}).get("pinned") == "1"
        token = await (await self.service.store()).shared_token(cid) if meta else None
        return {
            ui.title: gr.Textbox(value=(meta or {}).get("title", "")),
            ui.exported: gr.File(value=None, visible=False),
            # A shared chat shows its link (and Stop sharing) whenever it is open.
            ui.share_row: gr.Row(visible=token is not None),
            ui.share_link: f"/?share={token}" if token else "",
            ui.pin_btn: gr.Button(value=i18n("unpin" if pinned else "pin")),
        }

    # -- rename, pin ------------------------------------------------------------------------
    async def rename(self, data: dict) -> Update:
        ui = self.ui
        browser_id, cid = browser_id_of(data[ui.browser]), data[ui.conversation_id]
        title = " ".join((data[ui.title] or "").split())[:80]
        store = await self.service.store()
        if not (cid and title and await store.owns(browser_id, cid)):
            return gr.skip()
        await store.update_meta(cid, title=title, title_auto="0")  # never auto-titled again
        gr.Info(f"Renamed to “{title}”.")
        return {ui.conversations: await self._listing(data, cid)}

    async def toggle_pin(self, data: dict) -> Update:
        cid = data[self.ui.conversation_id]
        if not cid:
            gr.Info("Send a message first: there is no chat to pin yet.")
            return gr.skip()
        meta = await (await self.service.store()).get_meta(cid) or {}
        return await self._set_pin(data, cid, meta.get("pinned") != "1")

    async def _set_pin(self, data: dict, cid: str, pinned: bool) -> Update:
        ui, store = self.ui, await self.service.store()
        if not await store.owns(browser_id_of(data[ui.browser]), cid):
            return gr.skip()
        await store.update_meta(cid, pinned="1" if pinned else "")
        update: Update = {ui.conversations: await self._listing(data, data[ui.conversation_id])}
        if cid == data[ui.conversation_id]:
            update[ui.pin_btn] = gr.Button(value=i18n("unpin" if pinned else "pin"))
        return update

    # -- share ------------------------------------------------------------------------------
    async def share(self, data: dict) -> Update:
        """A read-only link to a snapshot of the chat as it is now (sharing again updates
        the snapshot behind the same link)."""
        ui = self.ui
        cid, store = data[ui.conversation_id], await self.service.store()
        if not (cid and await store.owns(browser_id_of(data[ui.browser]), cid)):
            gr.Info("Send a message first: there is nothing to share yet.")
            return gr.skip()
        try:
            await self.service.check_budget("shares", browser_id_of(data[ui.browser]), None)
        except ChatError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        token = await store.share_conversation(cid)
        if token is None:
            return gr.skip()
        gr.Info("Anyone with the link can read this snapshot. · 任何拿到链接的人都能查看。")
        return {ui.share_row: gr.Row(visible=True), ui.share_link: f"/?share={token}"}

    async def unshare(self, data: dict) -> Update:
        ui = self.ui
        cid, store = data[ui.conversation_id], await self.service.store()
        if cid and await store.owns(browser_id_of(data[ui.browser]), cid):
            await store.unshare_conversation(cid)
            gr.Info("Sharing stopped: the link no longer opens. · 已停止分享。")
        return {ui.share_row: gr.Row(visible=False)}

    # -- delete with Undo ---------------------------------------------------------------------
    async def delete_current(self, data: dict) -> Update:
        cid = data[self.ui.conversation_id]
        if not cid:
            return gr.skip()
        return await self._delete(data, cid)

    async def _delete(self, data: dict, cid: str) -> Update:
        """Off the list at once; gone for good after UNDO_DELETE_SECONDS unless undone."""
        ui = self.ui
        browser_id, store = browser_id_of(data[ui.browser]), await self.service.store()
        meta = await store.get_meta(cid) or {}
        if meta.get("browser") != browser_id or not await store.trash_conversation(browser_id, cid):
            return gr.skip()
        title = safe_markdown(meta.get("title") or "New chat")
        update: Update = {
            ui.deleted_row: gr.Row(visible=True),
            ui.deleted_note: f"Deleted “{title}”. · 已删除。",
            ui.deleted: cid,
            ui.undo_timer: gr.Timer(active=True),
        }
        if cid == data[ui.conversation_id]:
            return {
                **update,
                **self._opened(data, browser_id, "", [], await self._listing(data, None), ""),
            }
        return {**update, ui.conversations: await self._listing(data, data[ui.conversation_id])}

    async def undo_delete(self, data: dict) -> Update:
        ui = self.ui
        cid, browser_id = data[ui.deleted], browser_id_of(data[ui.browser])
        store = await self.service.store()
        restored = bool(cid) and await store.restore_conversation(browser_id, cid)
        hidden = self._no_undo()
        if not restored:
            gr.Warning("Too late: that chat is gone for good. · 已无法恢复。")
            return hidden
        gr.Info("Chat restored. · 已恢复。")
        return {**hidden, **await self.open_conversation(data, cid)}

    async def forget_deleted(self, data: dict) -> Update:
        """The Undo window is over: the chat goes for good, the bar goes away."""
        ui, cid = self.ui, data[self.ui.deleted]
        if cid:
            store = await self.service.store()
            await store.purge_trash(browser_id_of(data[ui.browser]), UNDO_DELETE_SECONDS - 1)
            await asyncio.to_thread(self.exports.forget, cid)
        return self._no_undo()

    def _no_undo(self) -> Update:
        ui = self.ui
        return {
            ui.deleted_row: gr.Row(visible=False),
            ui.deleted_note: "",
            ui.deleted: "",
            ui.undo_timer: gr.Timer(active=False),
        }

    # -- export, import ---------------------------------------------------------------------
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
        shown = await self.chat_value(cid, messages)
        listing = await self._listing(data, cid)
        return self._opened(data, browser_id, cid, shown, listing, usage_line(messages))
