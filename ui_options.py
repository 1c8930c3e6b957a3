"""The choices the page offers (roles, providers, models) and the status panel's text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat import ChatService
from config import CUSTOM_ROLE, ROLES
from providers import Provider, Providers
from ui_text import i18n


def user_keys(keys: Mapping | None) -> dict[str, str]:
    """The user's own keys (bring your own key), as this tab holds them."""
    return {pid: key for pid, key in (keys or {}).items() if isinstance(key, str) and key}


def role_choices() -> list[tuple[str, str]]:
    return [(role.name, role.id) for role in ROLES.values()] + [("Custom · 自定义", CUSTOM_ROLE)]


def provider_choices(providers: Providers, keys: Mapping | None = None) -> list[tuple[str, str]]:
    """Enabled providers, plus those this user brought a key for."""
    own = user_keys(keys)
    return [
        (p.name if p.enabled else f"{p.name} (your key)", p.id)
        for p in providers.all()
        if p.enabled or p.id in own
    ]


def byok_providers(providers: Providers) -> list[Provider]:
    """Providers a user can enable with their own key (those with a key variable)."""
    return [p for p in providers.all() if p.key_env and p.base_url]


def model_choices(providers: Providers, provider_id: str) -> list[tuple[str, str]]:
    provider = providers.get(provider_id)
    return [(f"{m} 👁" if provider.supports_vision(m) else m, m) for m in provider.models]


def status_markdown(service: ChatService) -> str:
    providers: Any = service.providers
    # One translated key, first (the frontend translates one per string), then live data.
    store = i18n("status_redis" if service.settings.redis_url else "status_memory")
    enabled = ", ".join(p.name for p in providers.enabled())
    hints = "\n".join(f"- {p.name}: {p.hint}" for p in providers.all() if not p.enabled)
    more = (
        f"\n\n<details><summary>More providers · 更多服务商</summary>\n\n{hints}\n</details>"
        if hints
        else ""
    )
    return f"{store} {enabled}.{more}"
