"""The checks of a request before anything is stored or sent, and its plan: which provider,
model, system prompt and settings answer it."""

from __future__ import annotations

from collections.abc import Mapping

from chat_context import effective_detail, system_prompt_for
from chat_errors import ChatError
from chat_types import Plan, TurnRequest
from config import Settings
from providers import Provider, ProviderError, Providers


def check_message(settings: Settings, text: str, image_count: int) -> None:
    """A message within MAX_MESSAGE_CHARS and MAX_IMAGES_PER_MESSAGE, and not empty."""
    if not text.strip() and not image_count:
        raise ChatError("Type a message or attach an image first.")
    if len(text) > settings.max_message_chars:
        raise ChatError(
            f"The message is {len(text):,} characters long; the limit is "
            f"{settings.max_message_chars:,}. Shorten it or send it in parts."
        )
    if image_count > settings.max_images_per_message:
        raise ChatError(
            f"{image_count} images attached; at most {settings.max_images_per_message} "
            "can go in one message. Remove some and send again."
        )


def output_tokens(settings: Settings, max_tokens: int | None) -> int | None:
    """`max_tokens` as sent upstream: at most MAX_OUTPUT_TOKENS (None: the model's own
    default, which the model's limit bounds)."""
    if max_tokens is None:
        return None
    return max(1, min(int(max_tokens), settings.max_output_tokens))


def resolve(
    providers: Providers, provider_id: str, model: str, api_keys: Mapping[str, str] | None
) -> tuple[Provider, str]:
    """The provider (with the user's own key for it, if any) and model; ChatError if not
    available."""
    wanted = (provider_id or "").strip().lower()
    try:
        return providers.resolve(
            provider_id or "", model or "", api_key=(api_keys or {}).get(wanted)
        )
    except ProviderError as exc:
        raise ChatError(str(exc)) from None


def plan_for(settings: Settings, providers: Providers, req: TurnRequest) -> Plan:
    """How `req` is answered; ChatError for a long prompt, an unknown role or provider."""
    if len(req.system_prompt or "") > settings.max_message_chars:
        raise ChatError(
            f"The custom system prompt is {len(req.system_prompt):,} characters long; the "
            f"limit is {settings.max_message_chars:,}. Shorten it."
        )
    prompt = system_prompt_for(req.role, req.system_prompt)
    provider, model = resolve(providers, req.provider, req.model, req.api_keys)
    sampling = {**req.sampling(), "max_tokens": output_tokens(settings, req.max_tokens)}
    detail = effective_detail(provider.id, req.detail)
    return Plan(provider, model, prompt, detail, sampling, req.api_key(provider.id))


def check_vision(message: dict, plan: Plan) -> None:
    """A message with images goes only to a model that can see them."""
    if message.get("images") and not plan.provider.supports_vision(plan.model):
        raise ChatError(f"{plan.model} cannot see images. Pick a vision model (marked 👁).")
