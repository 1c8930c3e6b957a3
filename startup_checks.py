"""Misconfigurations that can be seen without calling any provider: one warning line each.

`python app.py` logs these at start, the UI can show them, and `python app.py --check`
prints them under its table, so a mistyped DEFAULT_PROVIDER or a base URL missing its API
path reads the same wherever it is seen. Each line says what is wrong and what to do.
Settings that cannot be used at all (a number that is not a number) already stop the app in
config.py; these are the ones the app would otherwise go on with silently.

Pure: no network, no Redis, no files. Keys never appear in a line, URLs only in their
display form (no userinfo, no query).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from accounts import parse_accounts
from config import Settings
from providers import (
    DEFAULT_DEMO_DELAY_MS,
    DEMO_ID,
    PRESETS,
    Provider,
    ProviderError,
    Providers,
    display_url,
)

# Where each API lives under its host: a base URL without this suffix is the usual 404.
EXPECTED_PATHS = {
    "doubao": "/api/v3",
    "qwen": "/compatible-mode/v1",
    "zhipu": "/api/paas/v4",
    "ollama": "/v1",
}
EXAMPLE_URLS = {
    **{preset.id: preset.base_url for preset in PRESETS if preset.base_url},
    "ollama": "http://localhost:11434/v1",
}
# Keys sent when none is configured: not secrets (so "EMPTY" may be shown and is not
# redacted), and never a real key for a provider that needs one.
PLACEHOLDER_KEYS = frozenset(p.placeholder_key for p in PRESETS if p.placeholder_key)
# What people leave in a key variable from an example file.
_PLACEHOLDER_WORDS = frozenset({"none", "null", "changeme", "xxx", "todo", "key", "api_key"})
_PLACEHOLDER_PATTERN = re.compile(r"<.*>|\.\.\.|your[-_ ]?(api[-_ ]?)?key|^sk-x+$", re.I)
_PRESET_MODELS = {preset.id: preset.models for preset in PRESETS}
_BY_PREFIX = {
    preset.prefix.lower(): preset.id for preset in PRESETS if preset.prefix.lower() != preset.id
}
_NEEDS_KEY = frozenset(preset.id for preset in PRESETS if preset.needs_key)
_SHOWN_CHARS = 40  # of an operator's value echoed back (a model name, a provider id)


def misconfigurations(
    settings: Settings, providers: Providers, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One short warning per setting the app ignores, overrides or cannot use as meant.

    `environ` is the environment the registry was built from (default: os.environ); it is
    read for what `Settings` and `Providers` do not keep (a blank key, the raw base URL).
    """
    env = os.environ if environ is None else environ
    return [
        *_default_provider(settings, providers),
        *(line for provider in providers.all() for line in provider_problems(provider, env)),
        *_demo_delay(env),
        *_app_auth(settings),
        *_limits(settings),
    ]


def provider_problems(provider: Provider, environ: Mapping[str, str]) -> list[str]:
    """What is wrong with one provider's variables (its key, base URL, model list)."""
    if provider.id == DEMO_ID or not provider.env_prefix:
        return []
    return [
        *_key_problems(provider, environ),
        *_url_problems(provider, environ),
        *_model_problems(provider, environ),
    ]


def path_fix(provider: Provider) -> str | None:
    """The fix for a base URL missing the provider's API path, or None when it looks right."""
    expected = EXPECTED_PATHS.get(provider.id)
    path = urlsplit(provider.base_url or "").path.rstrip("/")
    if expected is None or path.endswith(expected):
        return None
    return (
        f"{provider.env_prefix}_BASE_URL must end in {expected} "
        f"(e.g. {EXAMPLE_URLS[provider.id]}); {display_url(provider.base_url)} is not "
        f"{provider.name}'s API path."
    )


# ---- DEFAULT_PROVIDER


def _default_provider(settings: Settings, providers: Providers) -> Iterator[str]:
    wanted = settings.default_provider
    if not wanted:
        return
    shown = wanted[:_SHOWN_CHARS]
    enabled = ", ".join(p.id for p in providers.enabled())
    using = f"using {providers.default_id} instead (enabled: {enabled})"
    try:
        chosen = providers.get(wanted)
    except ProviderError:
        ids = [p.id for p in providers.all()]
        # "ark" / "moonshot": the key's prefix instead of the provider's id
        close = [_BY_PREFIX[wanted]] if wanted in _BY_PREFIX else []
        close = close or difflib.get_close_matches(wanted, ids, n=1, cutoff=0.6)
        guess = f" (did you mean {close[0]}?)" if close else f"; choose one of: {', '.join(ids)}"
        yield f"DEFAULT_PROVIDER={shown!r} names no provider{guess}; {using}."
        return
    if not chosen.enabled:
        yield f"DEFAULT_PROVIDER={shown!r} is not enabled: {chosen.hint} Meanwhile {using}."


# ---- one provider's variables


def _key_problems(provider: Provider, environ: Mapping[str, str]) -> Iterator[str]:
    name = f"{provider.env_prefix}_API_KEY"
    raw = environ.get(name)
    if raw is None or raw == "":  # unset, or the empty line of .env.example: not configured
        return
    key = raw.strip()
    if not key:
        yield (
            f"{name} is set but blank (only spaces): {provider.name} stays disabled. "
            "Paste the key, or delete the line."
        )
    elif provider.id in _NEEDS_KEY and _looks_like_placeholder(key):
        shown = f" {key!r}" if key in PLACEHOLDER_KEYS else ""
        yield (
            f"{name} holds a placeholder{shown}, not a key: {provider.name} will be refused. "
            "Paste the key from the provider's console."
        )
    elif key[0] == key[-1] and key[0] in "\"'" and len(key) > 1:
        yield f"{name} is wrapped in quotes, which would be sent as part of the key: remove them."
    elif any(ch.isspace() for ch in key):
        yield f"{name} contains spaces: set the key alone (no 'Bearer ', no second key)."


def _looks_like_placeholder(key: str) -> bool:
    return (
        key in PLACEHOLDER_KEYS
        or key.lower() in _PLACEHOLDER_WORDS
        or bool(_PLACEHOLDER_PATTERN.search(key))
    )


def _url_problems(provider: Provider, environ: Mapping[str, str]) -> Iterator[str]:
    name = f"{provider.env_prefix}_BASE_URL"
    raw = (environ.get(name) or "").strip()
    if not raw:
        return
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        example = EXAMPLE_URLS.get(provider.id) or "https://host/v1"
        yield (
            f"{name} must be an http(s) URL (e.g. {example}), got {display_url(raw)}: "
            f"{provider.name} stays disabled."
        )
        return
    fix = path_fix(provider)
    if fix:
        yield fix


def _model_problems(provider: Provider, environ: Mapping[str, str]) -> Iterator[str]:
    if provider.enabled and not provider.models:
        yield (
            f"{provider.setup_env} is set but {provider.env_prefix}_MODELS is empty: list the "
            "models, comma-separated (the first is the default)."
        )
        return
    known = _PRESET_MODELS.get(provider.id, ())
    if not (environ.get(f"{provider.env_prefix}_MODELS") or "").strip():
        return  # the preset's own list
    for model in provider.models:
        if model in known:
            continue
        meant = next((k for k in known if k != model and looks_mistyped(model, k)), None)
        if meant:
            default = " (the default model)" if model == provider.default_model else ""
            yield (
                f"{provider.env_prefix}_MODELS has {model[:_SHOWN_CHARS]!r}{default}: did you "
                f"mean {meant!r}? Fix the name, or the provider will answer 'model not found'."
            )


def looks_mistyped(typed: str, known: str) -> bool:
    """True for a slip of the keyboard, not for another model of the family.

    Same name but for case and separators ("GPT4o" / "gpt-4o"), two letters swapped
    ("deepseek-chta"), or one letter added, lost or changed inside a word ("deepsek-chat").
    A difference at or beside a digit is a different model ("gpt-4o" / "gpt-4", "o3" / "o1").
    """
    if typed == known:
        return False
    if _squashed(typed) == _squashed(known):
        return True
    a, b = typed.lower(), known.lower()
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    changed_a, changed_b = a[start:end_a], b[start:end_b]
    if len(changed_a) == len(changed_b) == 2 and changed_a == changed_b[::-1]:
        return changed_a.isalpha()
    if len(changed_a) + len(changed_b) > 2 or max(len(changed_a), len(changed_b)) != 1:
        return False
    # One letter added, lost or changed: its neighbours (in the longer name) are letters too.
    longer = a if len(a) >= len(b) else b
    around = longer[max(0, start - 1) : start + 2]
    return len(around) == 3 and around.isalpha()


def _squashed(name: str) -> str:
    return re.sub(r"[\s._:-]", "", name.lower())


# ---- other settings


def _demo_delay(environ: Mapping[str, str]) -> Iterator[str]:
    raw = (environ.get("DEMO_DELAY_MS") or "").strip()
    if not raw:
        return
    try:
        value = float(raw)
    except ValueError:
        yield (
            f"DEMO_DELAY_MS must be a number of milliseconds, got {raw[:_SHOWN_CHARS]!r}; "
            f"using {DEFAULT_DEMO_DELAY_MS:g}."
        )
        return
    if not math.isfinite(value) or value < 0:
        yield f"DEMO_DELAY_MS must be 0 or a positive number of milliseconds, got {raw!r}."


def _app_auth(settings: Settings) -> Iterator[str]:
    if not settings.app_auth:
        return
    try:
        parse_accounts(settings.app_auth)
    except ValueError:  # nothing of the value is echoed: a part may be a password
        yield (
            "APP_AUTH must look like user:password, or several such pairs separated by "
            "commas (both parts non-empty); the app will refuse to start."
        )


def _limits(settings: Settings) -> Iterator[str]:
    context, kept = settings.history_context_messages, settings.history_max_messages
    if context > kept:
        yield (
            f"HISTORY_CONTEXT_MESSAGES={context} is more than HISTORY_MAX_MESSAGES={kept} keeps: "
            f"the model sees at most {kept}. Raise HISTORY_MAX_MESSAGES or lower the other."
        )
    image_mb = settings.max_image_mb
    if 0 < settings.upload_mb_per_minute < image_mb:
        yield (
            f"UPLOAD_MB_PER_MINUTE={settings.upload_mb_per_minute:g} is below MAX_IMAGE_MB="
            f"{image_mb:g}: an image that big can never be uploaded. Raise it (0 = off)."
        )
    if settings.max_upload_disk_mb < image_mb:
        yield (
            f"MAX_UPLOAD_DISK_MB={settings.max_upload_disk_mb:g} is below MAX_IMAGE_MB="
            f"{image_mb:g}: an image that big can never be uploaded. Raise MAX_UPLOAD_DISK_MB."
        )
