"""Reading and choosing among answers: thumbs up/down, the version arrows (‹ 2/3 ›), "Load
earlier", and Compare's two columns. The turn's streaming is ui_handlers.Handlers', which
builds on these."""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

import conversation_tree as tree
from chat import ChatError, Opened
from chat_view import LOAD_EARLIER, VERSION_LINK, authorship, display_answer
from history import HistoryUnavailable
from ui_state import HandlerBase, Update, browser_id_of, usage_line

# A version arrow's link: <VERSION_LINK><position>-<version> (chat_view.navigator).
_VERSION_LINK = re.compile(re.escape(VERSION_LINK) + r"(\d{1,4})-(\d{1,3})")
LIKED = {True: "up", False: "down"}


class VersionHandlers(HandlerBase):
    # -- feedback, versions, the window ---------------------------------------------------
    async def rate(self, data: dict, liked: gr.LikeData) -> Update:
        """A thumb on an answer, stored with it (a second click on the same thumb clears it)."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        if not cid:
            return gr.skip()
        index = liked.index if isinstance(liked.index, int) else liked.index[0]
        value = LIKED.get(liked.liked) if isinstance(liked.liked, bool) else None
        browser_id = browser_id_of(data[ui.browser])
        try:
            rated = await self.service.set_feedback_shown(
                browser_id, cid, index, value, data[ui.window]
            )
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return {ui.usage_total: usage_line(rated)} if rated is not None else gr.skip()

    async def follow_chat_link(self, data: dict, event: gr.EventData) -> Update:
        """A link of the chat's own was clicked: a version arrow, or "Load earlier"."""
        link = (getattr(event, "_data", None) or {}).get("link")
        if link == LOAD_EARLIER:
            return await self.load_earlier(data)
        found = _VERSION_LINK.fullmatch(link) if isinstance(link, str) else None
        return await self.switch_version(data, found) if found else gr.skip()

    async def switch_version(self, data: dict, found: re.Match) -> Update:
        """Show that version (and its branch)."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        if not cid:
            return gr.skip()
        position, target = int(found[1]), int(found[2])
        try:
            opened = await self.service.switch_version(
                browser_id_of(data[ui.browser]), cid, position, target
            )
        except ChatError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return await self._shown(cid, opened, data[ui.window])

    async def load_earlier(self, data: dict) -> Update:
        """Show DISPLAY_STEP more of the earlier messages above the chat."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        opened = await self.service.open(browser_id_of(data[ui.browser]), cid)
        if opened is None:
            return gr.skip()
        window = min(
            (data[ui.window] or self.service.display_limit) + self.service.display_limit,
            max(len(opened.messages), self.service.display_limit),
        )
        return {
            ui.chatbot: await self.chat_value(cid, opened.messages, window),
            ui.window: window,
        }

    async def _shown(self, cid: str, opened: Opened, window: int | None) -> Update:
        return {
            self.ui.chatbot: await self.chat_value(cid, opened.messages, window),
            self.ui.usage_total: usage_line(opened.messages),
        }

    # -- compare --------------------------------------------------------------------------
    async def start_compare(self, data: dict) -> Update:
        """Open the panel: the answer shown on the left, the right one about to stream; the
        chat above shows the conversation up to the question."""
        ui, cid = self.ui, data[self.ui.conversation_id]
        opened = await self.service.open(browser_id_of(data[ui.browser]), cid) if cid else None
        messages = list(opened.messages) if opened else []
        if not messages or messages[-1]["role"] != "assistant":
            gr.Info("Compare needs an answer to compare with: send a message first.")
            return {ui.compare_pick: None, ui.compare_panel: gr.Row(visible=False)}
        last = messages[-1]
        provider = self.providers.get(data[ui.provider])
        right = f"**B** · {data[ui.model]} · {provider.name} · answering… · 回答中…"
        return {
            ui.chatbot: await self.chat_value(cid, messages[:-1], data[ui.window]),
            ui.compare_panel: gr.Row(visible=True),
            ui.compare_left: self._column(last),
            ui.compare_left_label: f"**A** · {authorship(last, self.service.provider_names)}",
            ui.compare_right: [],
            ui.compare_right_label: right,
            ui.compare_pick: {"cid": cid, "left": self._left_after_retry(last)},
        }

    @staticmethod
    def _left_after_retry(last: dict) -> int | None:
        """Where the left answer's version will be once the new one is added (the oldest
        versions go past MAX_VERSIONS; a failed answer is replaced, not kept)."""
        if last.get("status") == "error":
            return None
        count = tree.version_count(last)
        return tree.shown_version(last) - max(0, count + 1 - tree.MAX_VERSIONS)

    def _column(self, message: dict) -> list[dict]:
        return display_answer(
            message.get("content", ""),
            message.get("reasoning", ""),
            status=message.get("status", "complete"),
            error=message.get("error"),
            usage=message.get("usage"),
        )

    async def finish_compare(self, data: dict) -> Update:
        """After the right answer: the turn's bookkeeping, and the right column as saved."""
        ui = self.ui
        update = await self.finish_turn(data)  # type: ignore[attr-defined]  # Handlers'
        pick, cid = data[ui.compare_pick], data[ui.conversation_id]
        opened = await self.service.open(browser_id_of(data[ui.browser]), cid) if pick else None
        if opened is None or not opened.messages:
            return {**update, ui.compare_right: gr.skip(), ui.compare_right_label: gr.skip()}
        last = opened.messages[-1]
        label = f"**B** · {authorship(last, self.service.provider_names)}"
        return {
            **update,
            ui.compare_right: self._column(last),
            ui.compare_right_label: label,
            ui.compare_pick: {**pick, "right": tree.shown_version(last)},
        }

    async def pick_left(self, data: dict) -> Update:
        return await self._pick(data, "left")

    async def pick_right(self, data: dict) -> Update:
        return await self._pick(data, "right")

    async def _pick(self, data: dict, side: str) -> Update:
        """Continue with one column's answer: it becomes the version shown (the model sees
        it next); the other stays as a version."""
        ui = self.ui
        pick: dict[str, Any] = data[ui.compare_pick] or {}
        cid, browser_id = pick.get("cid", ""), browser_id_of(data[ui.browser])
        try:
            opened = await self.service.open(browser_id, cid) if cid else None
            if opened is None or not opened.messages:
                return {ui.compare_panel: gr.Row(visible=False)}
            target = pick.get(side)
            position = len(opened.messages) - 1
            if isinstance(target, int) and target != tree.shown_version(opened.messages[-1]):
                opened = await self.service.switch_version(browser_id, cid, position, target)
        except (ChatError, HistoryUnavailable) as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return {
            **await self._shown(cid, opened, data[ui.window]),
            ui.compare_panel: gr.Row(visible=False),
        }
