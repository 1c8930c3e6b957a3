"""What the page's handlers share: the browser's id and state, the turn's outcome, the
conversation list and the settings a conversation reopens with."""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import gradio as gr

import accounts
import ui_list
import ui_options
from chat import ChatService, TurnUpdate
from chat_view import display_answer, feedback_values
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings
from history import HistoryUnavailable, app_secret_from_redis, is_valid_id, new_id
from token_usage import conversation_usage

if TYPE_CHECKING:
    from ui import UI

ACCOUNT_SECRET_PREFIX = "chat:account-ids:"  # its key: <prefix>app_secret
UNDO_DELETE_SECONDS = 10  # how long a deleted conversation can be brought back

# component -> its new value or gr.update; gr.skip() when nothing changes (an empty dict
# would be taken as a value: "{}" in a textbox, an error with several outputs)
Update = dict[Any, Any]


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


@functools.cache
def account_secret(settings: Settings) -> str:
    """The key account ids are derived under (accounts.account_browser_id), read once. Not
    the BrowserState's: Gradio sends that one to every page in /config, so any signed-in
    user could work out another's account id with it. Generated once and kept in Redis
    beside it (`chat:account-ids:app_secret`), so restarts and replicas agree; with the
    embedded store a random one for this process, as long as that store keeps anything."""
    if settings.redis_url:
        try:
            return app_secret_from_redis(settings.redis_url, prefix=ACCOUNT_SECRET_PREFIX)
        except HistoryUnavailable as exc:
            raise SystemExit(str(exc)) from None
    return secrets.token_hex(32)


def browser_id_of(state: Mapping | None) -> str:
    browser_id = (state or {}).get("browser_id", "")
    return browser_id if is_valid_id(browser_id) else new_id()


def browser_value(state: Mapping | None, browser_id: str, cid: str) -> dict:
    """The browser state to store: its id, the open chat, and whether the id is a signed-in
    account's (then a page that loads signed out starts afresh)."""
    value = {"browser_id": browser_id, "conversation_id": cid}
    return {**value, "account": True} if (state or {}).get("account") else value


def usage_line(messages: Sequence[dict]) -> str:
    """The conversation's tokens, cost and thumbs, for the chat's header."""
    line = conversation_usage(messages)
    ups = sum(1 for m in messages if m.get("feedback") == "up")
    downs = sum(1 for m in messages if m.get("feedback") == "down")
    thumbs = " · ".join(
        t for t in (f"👍 {ups}" if ups else "", f"👎 {downs}" if downs else "") if t
    )
    line = " · ".join(part for part in (line, thumbs) if part)
    return f"**Usage · 用量:** {line}" if line else ""


def answer_view(update: TurnUpdate) -> list[dict]:
    """The answer of a snapshot as Chatbot messages (thinking, answer, notice)."""
    return display_answer(
        update.answer,
        update.reasoning,
        status=update.status,
        error=update.error,
        streaming=not update.done,
        usage=update.usage if update.done else None,
    )


@dataclass(frozen=True)
class Outcome:
    """What a streamed turn left for the step after it (Stop, or the bookkeeping)."""

    conversation_id: str = ""
    usage: str | None = None  # the conversation's usage line, when the turn ended with it
    restore: dict | None = None  # a refused message, put back into the input box


class HandlerBase:
    """The page's components, the chat service and the settings, for every handler."""

    def __init__(self, ui: UI, service: ChatService, settings: Settings) -> None:
        self.ui, self.service, self.settings = ui, service, settings
        self.providers: Any = service.providers
        self.account_key = account_secret(settings)  # at build time: Redis is read once, here
        self.settings_outputs = [
            ui.role, ui.provider, ui.model, ui.temperature, ui.top_p, ui.max_tokens
        ]  # fmt: skip

    def account_id(self, http: gr.Request | None, profile: gr.OAuthProfile | None) -> str | None:
        """The signed-in account's id, which keys its conversations in place of the browser's
        (accounts.py); None without a login."""
        account = accounts.signed_in(http, profile)
        if account is None:
            return None
        return accounts.account_browser_id(self.account_key, *account)

    async def conversation_list(
        self,
        browser_id: str,
        selected: str | None,
        query: str = "",
        tz: Any = 0,
        *,
        purge: bool = True,
    ) -> str:
        """The browser's conversations (ui_list: grouped by date in the reader's time zone,
        `tz` minutes east of UTC), or those matching `query`; `selected` marked as open.
        Conversations deleted longer ago than the Undo window go for good first (`purge`;
        the list after a turn leaves that to the next load, the timer or delete)."""
        store = await self.service.store()
        if purge:
            with contextlib.suppress(HistoryUnavailable):
                await store.purge_trash(browser_id, UNDO_DELETE_SECONDS)
        query = " ".join((query or "").split())
        if query:
            hits = await store.search_conversations(browser_id, query)
            return ui_list.render_hits(hits, selected, query)
        items = await store.list_conversations(browser_id)
        return ui_list.render_list(items, selected, tz_minutes=_minutes(tz))

    async def chat_value(
        self, cid: str, messages: Sequence[dict], window: int | None = None
    ) -> gr.Chatbot:
        """The conversation in the Chatbot, with the thumbs its answers were given."""
        shown, positions = await self.service.display_indexed(cid, messages, window)
        thumbs = feedback_values(messages, shown, positions)
        return gr.Chatbot(value=cast(Any, shown), feedback_value=thumbs)

    def settings_for(self, meta: Mapping, keys: Mapping | None = None) -> Update:
        """Role, provider, model and sampling as the conversation left them (or defaults)."""
        ui, providers = self.ui, self.providers
        role = meta.get("role") if meta.get("role") in {*ROLES, CUSTOM_ROLE} else DEFAULT_ROLE
        choices = ui_options.provider_choices(providers, keys)
        provider_id = meta.get("provider", "")
        if provider_id not in {pid for _, pid in choices}:
            provider_id = providers.default_id
        model = meta.get("model") or providers.get(provider_id).default_model
        # An older conversation may have asked for more than MAX_OUTPUT_TOKENS now allows.
        max_tokens = min(int(_number(meta, "max_tokens", 0)), self.settings.max_output_tokens)
        return {
            ui.role: gr.Dropdown(value=role),
            ui.provider: gr.Dropdown(choices=choices, value=provider_id),
            ui.model: gr.Dropdown(
                choices=ui_options.model_choices(providers, provider_id), value=model
            ),
            ui.temperature: gr.Slider(value=_number(meta, "temperature", 0.7)),
            ui.top_p: gr.Slider(value=_number(meta, "top_p", 1.0)),
            ui.max_tokens: gr.Number(value=max_tokens),
        }


def _minutes(tz: Any) -> int:
    """A time zone offset from the page (minutes east of UTC), bounded; 0 when unusable."""
    try:
        minutes = int(float(tz))
    except (TypeError, ValueError, OverflowError):
        return 0
    return minutes if -14 * 60 <= minutes <= 14 * 60 else 0


def _number(meta: Mapping, name: str, default: float) -> float:
    try:
        return float(meta.get(name) or default)
    except ValueError:
        return default
