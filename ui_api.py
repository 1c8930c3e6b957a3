"""The public Gradio API (mirrors the seed service's REST endpoints): /chat, /history,
/delete_conversation, /export_conversation, /import_conversation, /roles, /providers; and
/share_conversation, /unshare_conversation (read-only links).

Every refusal is a short gr.Error the caller can act on; nothing else reaches a caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import gradio as gr

from chat import ChatError, ChatService, TurnRequest
from config import DEFAULT_ROLE, ROLES
from exports import ExportFiles
from history import HistoryUnavailable, is_valid_id
from http_guards import as_text, client_ip

BAD_ID = "That conversation id is not valid (32 hexadecimal characters)."
NO_CONVERSATION = "No such conversation (it may have expired)."
# What /chat's `images` must be; api_arguments.FileArgumentCheck answers junk with it before
# Gradio's own validation would fail with a generic error.
IMAGES_HELP = (
    "images must be a list of uploaded image files: pass each one as handle_file(path) "
    "with gradio_client."
)


def refuse(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


class ApiHandlers:
    def __init__(self, service: ChatService, exports: ExportFiles) -> None:
        self.service, self.exports = service, exports

    def register(self) -> None:
        """Adds the endpoints to the Blocks being built."""
        # Hidden components carry /chat's inputs: a gr.File is what makes gradio_client
        # upload the images, and a component's value is the parameter's default.
        with gr.Group(visible=False):
            inputs = [
                gr.Textbox(),  # message
                gr.File(file_count="multiple", file_types=["image"]),  # images
                gr.Textbox(value=DEFAULT_ROLE),  # role
                gr.Textbox(value=""),  # provider
                gr.Textbox(value=""),  # model
                gr.Textbox(value=""),  # conversation_id
                gr.Textbox(value=""),  # system_prompt
                gr.Textbox(value="auto"),  # detail
            ]
            outputs = [gr.Textbox(), gr.Textbox()]  # reply so far, conversation id
            trigger = gr.Button()
        trigger.click(
            self.chat,
            inputs,
            outputs,
            api_name="chat",
            api_description="Stream an answer; yields (reply_so_far, conversation_id).",
            # The outputs are plain strings already; Textbox.postprocess would only hand each
            # update to a worker thread and back (~0.14 ms per update).
            postprocess=False,
        )
        # /retry streams two strings as /chat does (gr.api would yield one JSON list).
        with gr.Group(visible=False):
            retry_in = [gr.Textbox(), gr.Textbox(value=""), gr.Textbox(value="")]
            retry_out = [gr.Textbox(), gr.Textbox()]  # reply so far, conversation id
            retry_trigger = gr.Button()
        retry_trigger.click(
            self.retry,
            retry_in,
            retry_out,
            api_name="retry",
            api_description="Stream a new version of the last answer; yields (reply_so_far, "
            "conversation_id). The earlier versions stay (see /history).",
            postprocess=False,
        )
        gr.api(self.history, api_name="history")
        gr.api(self.delete_conversation, api_name="delete_conversation")
        gr.api(self.export_conversation, api_name="export_conversation")
        gr.api(self.import_conversation, api_name="import_conversation")
        gr.api(self.share_conversation, api_name="share_conversation")
        gr.api(self.unshare_conversation, api_name="unshare_conversation")
        gr.api(roles, api_name="roles")
        gr.api(self.providers, api_name="providers")

    async def chat(
        self,
        message: str,
        images: list[str] | None = None,
        role: str = DEFAULT_ROLE,
        provider: str = "",
        model: str = "",
        conversation_id: str = "",
        system_prompt: str = "",
        detail: str = "auto",
        http: gr.Request | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """Stream an answer: yields (reply_so_far, conversation_id). Empty id = new
        conversation."""
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
            async for update in self.service.turn(request):
                yield update.answer, update.conversation_id
                if update.done and update.error:
                    raise refuse(update.error)
        except ChatError as exc:
            raise refuse(str(exc)) from None

    async def retry(
        self,
        conversation_id: str,
        provider: str = "",
        model: str = "",
        http: gr.Request | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """Answer the last message again, as /chat streams: a new version of the last answer
        (the one shown from then on). Empty provider/model: the conversation's."""
        cid = as_text(conversation_id)
        if not is_valid_id(cid):
            raise refuse(BAD_ID)
        try:
            meta = await (await self.service.store()).get_meta(cid)
        except HistoryUnavailable as exc:
            raise refuse(str(exc)) from None
        if meta is None:
            raise refuse("That conversation no longer exists (it may have expired).")
        request = TurnRequest(
            role=meta["role"] if meta.get("role") in ROLES else DEFAULT_ROLE,
            provider=as_text(provider) or meta.get("provider", ""),
            model=as_text(model) or (meta.get("model", "") if not as_text(provider) else ""),
            conversation_id=cid,
            client_ip=client_ip(http),
        )
        try:
            async for update in self.service.retry(request):
                yield update.answer, cid
                if update.done and update.error:
                    raise refuse(update.error)
        except ChatError as exc:
            raise refuse(str(exc)) from None

    async def history(self, conversation_id: str) -> list[dict]:
        """The messages of a conversation: [{role, content, images, ...}]; [] for an unknown
        id."""
        try:
            return await self.service.history(as_text(conversation_id))
        except (ChatError, HistoryUnavailable) as exc:
            raise refuse(str(exc)) from None

    async def delete_conversation(self, conversation_id: str) -> str:
        """Delete a conversation and its messages."""
        cid = as_text(conversation_id)
        if not is_valid_id(cid):
            raise refuse(BAD_ID)
        try:
            deleted = await (await self.service.store()).delete_conversation(cid)
        except HistoryUnavailable as exc:
            raise refuse(str(exc)) from None
        await asyncio.to_thread(self.exports.forget, cid)
        if deleted:
            return f"Deleted conversation {cid}."
        return f"No conversation {cid} (nothing deleted)."

    async def export_conversation(self, conversation_id: str, format: str = "json") -> str:
        """A conversation as JSON (images included, base64) or Markdown text."""
        cid = as_text(conversation_id)
        if not is_valid_id(cid):
            raise refuse(BAD_ID)
        if format not in ("json", "markdown"):
            raise refuse('format must be "json" or "markdown".')
        try:
            store = await self.service.store()
            if format == "markdown":
                text = await store.export_markdown(cid)
            else:
                data = await store.export_json(cid)
                text = json.dumps(data, ensure_ascii=False) if data is not None else None
        except HistoryUnavailable as exc:
            raise refuse(str(exc)) from None
        if text is None:
            raise refuse("No such conversation (it may have expired).")
        return text

    async def share_conversation(self, conversation_id: str, http: gr.Request | None = None) -> str:
        """A read-only link to a snapshot of the conversation: "/?share=<token>". Sharing
        again updates the snapshot behind the same link."""
        cid = as_text(conversation_id)
        if not is_valid_id(cid):
            raise refuse(BAD_ID)
        try:
            await self.service.check_budget("shares", None, client_ip(http))
            token = await (await self.service.store()).share_conversation(cid)
        except (ChatError, HistoryUnavailable) as exc:
            raise refuse(str(exc)) from None
        if token is None:
            raise refuse(NO_CONVERSATION)
        # Relative on purpose: a link built from the Host header could point anywhere.
        return f"/?share={token}"

    async def unshare_conversation(self, conversation_id: str) -> str:
        """Stop sharing a conversation: its link stops working at once."""
        cid = as_text(conversation_id)
        if not is_valid_id(cid):
            raise refuse(BAD_ID)
        try:
            store = await self.service.store()
            if await store.unshare_conversation(cid):
                return "Sharing stopped."
            known = await store.get_meta(cid) is not None
        except HistoryUnavailable as exc:
            raise refuse(str(exc)) from None
        if not known:
            raise refuse(NO_CONVERSATION)
        return "That conversation was not shared."

    async def import_conversation(self, data: str, http: gr.Request | None = None) -> str:
        """Import a JSON export as a new conversation; returns its id."""
        try:  # no browser: limited and charged by the caller's address
            return await self.service.import_conversation(as_text(data), None, client_ip(http))
        except (ChatError, HistoryUnavailable) as exc:
            raise refuse(str(exc)) from None
        except ValueError as exc:
            raise refuse(f"Import failed: {exc}") from None

    def providers(self) -> list[dict]:
        """The providers: [{id, name, enabled, default_model, models, vision_models}]."""
        return [p.public_info() for p in self.service.providers.all()]


def roles() -> list[dict]:
    """The roles (personas): [{id, name, prompt}]."""
    return [role.public_info() for role in ROLES.values()]
