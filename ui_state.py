"""What the page's handlers share: the browser's id and state, the turn's outcome, the
conversation list and the settings a conversation reopens with."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

import ui_options
from chat import ChatService, TurnUpdate
from chat_view import display_answer
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES, Settings
from history import HistoryUnavailable, app_secret_from_redis, is_valid_id, new_id
from token_usage import conversation_usage

if TYPE_CHECKING:
    from ui import UI

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


def browser_id_of(state: Mapping | None) -> str:
    browser_id = (state or {}).get("browser_id", "")
    return browser_id if is_valid_id(browser_id) else new_id()


def usage_line(messages: Sequence[dict]) -> str:
    line = conversation_usage(messages)
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
        self.settings_outputs = [
            ui.role, ui.provider, ui.model, ui.temperature, ui.top_p, ui.max_tokens
        ]  # fmt: skip

    async def conversation_list(self, browser_id: str, selected: str | None) -> gr.Radio:
        """The browser's conversations, newest first, with `selected` (None: none) chosen."""
        items = await (await self.service.store()).list_conversations(browser_id)
        choices = [(c.get("title") or "New chat", c["id"]) for c in items]
        return gr.Radio(choices=choices, value=selected)

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


def _number(meta: Mapping, name: str, default: float) -> float:
    try:
        return float(meta.get(name) or default)
    except ValueError:
        return default
