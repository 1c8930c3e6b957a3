"""Provider check: does each enabled provider really answer, and if not, what to change.

`python app.py --check` (and the settings panel) runs, for every enabled provider at once:

1. reachable: `GET {base_url}/models` through the provider's own client;
2. key valid: judged from the answers (401/403 = rejected);
3. model listed: is the default model in that list (when the endpoint has one);
4. reply: a short streamed answer (`max_tokens=5`) and its time to first token;
5. image: for a vision model, the same with a tiny PNG in the part format chat.py sends.

Each failure gets one short fix ("ARK_BASE_URL must end in /api/v3", "The key in X was
rejected", ...). Keys never appear in the output: providers.py redacts its error messages
and every string here is scrubbed again before it leaves this module. The results and their
table are in check_report.py; the misconfigurations seen without calling anyone (also logged
at startup) in startup_checks.py, whose lines the CLI prints under the table.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

import openai
from PIL import Image

from chat import image_part
from check_report import FAIL, PASS, SKIP, WARN, CheckResult, Step, format_report
from config import Settings, load_settings
from providers import (
    DEMO_ID,
    ContentDelta,
    Finished,
    Provider,
    ProviderError,
    Providers,
    ReasoningDelta,
    demo_reply,
    display_url,
)
from startup_checks import PLACEHOLDER_KEYS, misconfigurations, path_fix

log = logging.getLogger("check")

DEFAULT_TIMEOUT_S = 20.0  # per provider, all steps: one dead provider must not hang the check
MAX_TOKENS = 5
PROMPT = "Reply with the single word: OK"
IMAGE_PROMPT = "What colour is this image? Answer in one word."
MAX_MODELS_SHOWN = 6

_STEP_DOING = {
    "reachable": "to list its models",
    "reply": "to answer",
    "image": "to answer about an image",
}


@dataclass
class _Listing:
    """What GET /models said: an HTTP status and, when it parsed, the model ids."""

    status: int | None = None
    offered: list[str] | None = None
    unreachable: bool = False


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (220, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = _tiny_png()


# --------------------------------------------------------------------------------------
# The check


async def check_providers(
    providers: Providers,
    *,
    provider_ids: list[str] | None = None,
    api_keys: dict[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    for_operator: bool = True,
) -> list[CheckResult]:
    """Check the given providers (default: every enabled one) concurrently.

    `api_keys` maps provider id -> a key to test instead of the configured one (a key the
    user typed in the settings panel); it also enables a provider that has no key yet.
    With `for_operator=False` (the settings panel: any visitor) an operator's own base URLs,
    which may name internal hosts, are replaced by the variable that sets them.
    """
    keys = {pid.strip().lower(): key.strip() for pid, key in (api_keys or {}).items() if key}
    keys = {pid: key for pid, key in keys.items() if key}
    if provider_ids is None:
        ids = [p.id for p in providers.all() if p.enabled or p.id in keys]
    else:
        ids = list(dict.fromkeys(pid.strip().lower() for pid in provider_ids))
    results = await asyncio.gather(
        *(_check_guarded(providers, pid, keys.get(pid), timeout_s) for pid in ids)
    )
    secrets = _secrets(providers, keys.values())
    hidden = {} if for_operator else _internal_urls(providers)
    for result in results:
        _scrub(result, secrets, hidden)
    return list(results)


def _internal_urls(providers: Providers) -> dict[str, str]:
    """Operator-set base URLs (display form) -> the words shown instead."""
    return {
        display_url(p.base_url): f"the address in {p.env_prefix}_BASE_URL"
        for p in providers.all()
        if p.base_url and not p.url_is_public
    }


async def _check_guarded(
    providers: Providers, provider_id: str, api_key: str | None, timeout_s: float
) -> CheckResult:
    try:
        provider = providers.get(provider_id)
    except ProviderError as err:
        shown = provider_id[:40]
        return CheckResult(shown, shown, "", enabled=False, fixes=[err.message])
    if api_key:
        provider = providers.with_key(provider, api_key)
    result = CheckResult(
        provider.id,
        provider.name,
        provider.default_model,
        display_url(provider.base_url) if provider.base_url else "",
    )
    if not provider.enabled:
        result.enabled = False
        result.fixes.append(provider.hint or f"{provider.name} is not configured.")
        return result
    try:
        await asyncio.wait_for(_check(providers, provider, api_key, result), timeout_s)
    except TimeoutError:
        _timed_out(result, provider, timeout_s)
    except Exception as exc:  # one odd server (or a bug here) must not sink the whole table
        log.debug("check of %s failed", provider.id, exc_info=True)
        step = result.running or "reachable"
        result.steps[step] = Step(FAIL, "error")
        result.fixes.append(
            f"The check could not finish ({type(exc).__name__}). Try again; if it persists, "
            "report it with the app's log."
        )
    result.running = ""
    return result


async def _check(
    providers: Providers, provider: Provider, api_key: str | None, result: CheckResult
) -> None:
    if provider.id == DEMO_ID:
        await _check_demo(result)
        return
    listing = await _list_models(providers, provider, api_key, result)
    if listing.unreachable:
        return
    if not result.model:
        result.steps["listed"] = Step(FAIL, "no model set")
        result.fixes.append(
            f"Set {provider.env_prefix}_MODELS to a model this endpoint offers"
            f"{_choices(listing.offered)}."
        )
        return
    _judge_listing(result, listing)
    if not await _check_reply(providers, provider, api_key, result, listing):
        return
    if provider.supports_vision(result.model):
        await _check_image(providers, provider, api_key, result)
    else:
        result.steps["image"] = Step(SKIP, "text-only")


async def _check_demo(result: CheckResult) -> None:
    # The demo calls no model; describing the tiny image still runs its real local code.
    url = f"data:image/png;base64,{base64.b64encode(TINY_PNG).decode()}"
    messages = [{"role": "user", "content": PROMPT}]
    text = await asyncio.to_thread(demo_reply, messages, PROMPT, [url])
    result.steps["reachable"] = Step(PASS, "offline")
    result.steps["reply"] = Step(PASS, "offline")
    result.steps["image"] = Step(PASS) if "8×8" in text else Step(FAIL, "not described")
    if result.steps["image"].status == FAIL:
        result.fixes.append("The demo could not describe a PNG: check that Pillow is installed.")


# ---- step 1: reachable, and the model list


async def _list_models(
    providers: Providers, provider: Provider, api_key: str | None, result: CheckResult
) -> _Listing:
    result.running = "reachable"
    client = providers.client(provider.id, api_key)
    try:
        page = await client.models.list()
    except openai.APIConnectionError as exc:  # also APITimeoutError (connect timeout)
        why = _why_unreachable(exc)
        result.steps["reachable"] = Step(FAIL, why)
        result.fixes.append(
            f"Cannot reach {result.base_url} ({why}): check the network or "
            f"{provider.env_prefix}_BASE_URL."
        )
        return _Listing(unreachable=True)
    except openai.APIStatusError as exc:
        # Any HTTP answer means the host is there; some APIs simply have no /models.
        result.steps["reachable"] = Step(PASS)
        return _Listing(status=exc.status_code)
    except Exception:  # a 200 that is not a model list (an HTML page, a proxy's own JSON)
        log.debug("%s: unreadable /models", provider.id, exc_info=True)
        result.steps["reachable"] = Step(PASS)
        return _Listing(status=200)
    result.steps["reachable"] = Step(PASS)
    ids = [str(getattr(model, "id", "") or "") for model in getattr(page, "data", None) or []]
    return _Listing(status=200, offered=[i for i in ids if i])


def _why_unreachable(exc: openai.APIConnectionError) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    text = ""
    cause: BaseException | None = exc
    for _ in range(5):  # the SDK wraps httpx, which wraps the socket error
        if cause is None:
            break
        text += f" {type(cause).__name__} {cause}".lower()
        cause = cause.__cause__ or cause.__context__
    if "refused" in text:
        return "connection refused"
    if any(w in text for w in ("name or service", "nodename", "name resolution", "getaddrinfo")):
        return "host not found"
    if "ssl" in text or "certificate" in text:
        return "TLS error"
    return "no connection"


def _judge_listing(result: CheckResult, listing: _Listing) -> None:
    if listing.offered is None:
        notes = {404: "no /models", 401: "not allowed", 403: "not allowed", 200: "unreadable"}
        note = notes.get(listing.status or 0, f"HTTP {listing.status}")
        result.steps["listed"] = Step(SKIP, note)
    elif not listing.offered:
        result.steps["listed"] = Step(SKIP, "empty list")
    elif _offers(listing.offered, result.model):
        result.steps["listed"] = Step(PASS)
    else:
        # Failed for now; softened to a warning if the model answers (aliases, Ark "ep-" ids).
        result.steps["listed"] = Step(FAIL, "not offered")
    result.offered = listing.offered or []


def _offers(offered: Iterable[str], model: str) -> bool:
    names = {name.lower() for name in offered}
    wanted = model.strip().lower()
    # Ollama lists "llama3.2:latest" and answers to "llama3.2".
    return wanted in names or f"{wanted}:latest" in names or wanted.removesuffix(":latest") in names


def _choices(offered: Sequence[str] | None) -> str:
    if not offered:
        return ""
    shown = ", ".join(offered[:MAX_MODELS_SHOWN])
    more = f" (+{len(offered) - MAX_MODELS_SHOWN} more)" if len(offered) > MAX_MODELS_SHOWN else ""
    return f"; pick one of: {shown}{more}"


# ---- steps 2-4: key and a short streamed reply


async def _check_reply(
    providers: Providers,
    provider: Provider,
    api_key: str | None,
    result: CheckResult,
    listing: _Listing,
) -> bool:
    result.running = "reply"
    messages = [{"role": "user", "content": PROMPT}]
    try:
        text, ttft = await _ask(providers, provider.id, result.model, messages, api_key)
    except ProviderError as err:
        _reply_failed(provider, api_key, result, listing, err)
        return False
    result.steps["key"] = Step(PASS)
    result.steps["reply"] = Step(PASS, _duration(ttft))
    result.ttft_s = ttft
    result.reply_text = text[:80]
    if result.steps["listed"].status == FAIL:
        result.steps["listed"] = Step(WARN, "not listed")
        result.fixes.append(
            f"Note: {result.model} is not in the endpoint's model list but it answered "
            "(an alias or endpoint id?)."
        )
    return True


async def _ask(
    providers: Providers, provider_id: str, model: str, messages: list[dict], api_key: str | None
) -> tuple[str, float]:
    """Stream one short answer; returns its text and the seconds to the first token."""
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    events = providers.stream(provider_id, model, messages, max_tokens=MAX_TOKENS, api_key=api_key)
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if first is None and isinstance(event, ContentDelta | ReasoningDelta | Finished):
                first = time.monotonic() - started  # a reasoning model "thinks" first
            if isinstance(event, ContentDelta):
                parts.append(event.text)
    return "".join(parts).strip(), first if first is not None else time.monotonic() - started


def _reply_failed(
    provider: Provider,
    api_key: str | None,
    result: CheckResult,
    listing: _Listing,
    err: ProviderError,
) -> None:
    model, prefix = result.model, provider.env_prefix
    if err.code == "auth" or (listing.status == 401 and err.code != "quota"):
        result.steps["key"] = Step(FAIL, str(err.status or listing.status or ""))
        result.fixes.append(_key_fix(provider, api_key))
        return
    if err.code in ("quota", "bad_request", "context_length") or (
        err.code == "model_not_found" and listing.status == 200
    ):
        result.steps["key"] = Step(PASS)  # the server got past authentication
    result.steps["reply"] = Step(FAIL, str(err.status or err.code))
    path_fix_text = path_fix(provider)
    if path_fix_text and err.code in ("model_not_found", "bad_request", "malformed", "server"):
        result.fixes.append(path_fix_text)
    elif err.code == "model_not_found" and listing.status == 404:
        result.fixes.append(
            f"{provider.name} answered 404 (not found) for both /models and /chat/completions "
            f"at {result.base_url}: check {prefix}_BASE_URL (most OpenAI-compatible APIs end "
            "in /v1) and the model name."
        )
    elif result.steps["listed"].status == FAIL:
        result.fixes.append(
            f"Model {model} is not offered by this endpoint{_choices(result.offered)} "
            f"(set {prefix}_MODELS; the first is the default)."
        )
        if err.code != "model_not_found":
            result.fixes.append(err.message)
    else:
        result.fixes.append(err.message)


def _key_fix(provider: Provider, api_key: str | None) -> str:
    if api_key:
        return (
            f"The key you entered for {provider.name} was rejected: copy it again from the "
            "provider's console."
        )
    if provider.key_env:
        return (
            f"The key in {provider.key_env} was rejected: copy it again from the provider's "
            "console."
        )
    return (
        f"{provider.name} at {display_url(provider.base_url)} refused the request as "
        "unauthorised: check the server's own access settings."
    )


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


# ---- step 5: a tiny image for vision models


async def _check_image(
    providers: Providers, provider: Provider, api_key: str | None, result: CheckResult
) -> None:
    result.running = "image"
    part = image_part(TINY_PNG, "image/png", detail="auto")
    messages = [{"role": "user", "content": [{"type": "text", "text": IMAGE_PROMPT}, part]}]
    try:
        await _ask(providers, provider.id, result.model, messages, api_key)
    except ProviderError as err:
        result.steps["image"] = Step(FAIL, str(err.status or err.code))
        result.fixes.append(
            _vision_fix(provider, result.model) if err.code == "image_rejected" else err.message
        )
        return
    result.steps["image"] = Step(PASS)


def _vision_fix(provider: Provider, model: str) -> str:
    env = f"{provider.env_prefix}_VISION_MODELS"
    how = (
        f"remove it from {env}"
        if provider.vision_mode == "listed"
        else f"set {env} to the models that can see images"
    )
    return f"{model} cannot read images here: mark it as text-only ({how}) or pick a vision model."


def _timed_out(result: CheckResult, provider: Provider, timeout_s: float) -> None:
    step = result.running or "reachable"
    result.steps[step] = Step(FAIL, "timeout")
    result.fixes.append(
        f"{provider.name} took longer than {timeout_s:g} s {_STEP_DOING.get(step, 'to answer')}: "
        f"check the network or {provider.env_prefix}_BASE_URL, or try again later."
    )


# ---- key hygiene


def _secrets(providers: Providers, extra: Iterable[str]) -> list[str]:
    found = [p.api_key for p in providers.all() if p.api_key and p.api_key not in PLACEHOLDER_KEYS]
    # Longest first, so a key that contains another is replaced whole.
    return sorted({s for s in [*found, *extra] if len(s) >= 4}, key=len, reverse=True)


def _scrub(
    result: CheckResult, secrets: Sequence[str], hidden: dict[str, str] | None = None
) -> None:
    def clean(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        for url, words in (hidden or {}).items():
            text = text.replace(url, words)
        return text

    result.fixes = [clean(fix) for fix in result.fixes]
    result.offered = [clean(name) for name in result.offered]
    result.reply_text = clean(result.reply_text)
    result.model = clean(result.model)
    result.base_url = clean(result.base_url)
    for step in result.steps.values():
        step.note = clean(step.note)


# --------------------------------------------------------------------------------------
# Synchronous entry points (the CLI)


def run_check(
    providers: Providers,
    *,
    provider_ids: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[CheckResult]:
    """check_providers in its own event loop; closes the registry's clients afterwards."""

    async def run() -> list[CheckResult]:
        try:
            return await check_providers(providers, provider_ids=provider_ids, timeout_s=timeout_s)
        finally:
            await providers.aclose()

    return asyncio.run(run())


def cli(
    providers: Providers,
    out: TextIO | None = None,
    *,
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`python app.py --check`: print the table, then the startup warnings the table does not
    already say; 0 when every enabled provider passed."""
    out = out or sys.stdout
    # The table is the output: no INFO line per HTTP request (httpx) or per retry.
    logging.getLogger().setLevel(logging.WARNING)
    names = ", ".join(p.id for p in providers.enabled())
    print(f"Checking {names} (up to {DEFAULT_TIMEOUT_S:g} s each)...", file=sys.stderr)
    results = run_check(providers)
    print(format_report(results), file=out)
    said = {fix for result in results for fix in result.fixes}
    warnings = misconfigurations(settings or load_settings(environ), providers, environ)
    for warning in warnings:
        if warning not in said:
            print(f"Warning: {warning}", file=out)
    return 0 if all(result.passed for result in results) else 1
