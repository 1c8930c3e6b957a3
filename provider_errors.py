"""How providers say "no", turned into `ProviderError`s with a short, user-facing message
that never contains a key or an internal address.

Pure functions (unit-testable): the provider's own error body (`error_info`), an HTTP status
(`map_status`), an SDK exception (`map_exception`), plus the redaction every message goes
through and the Retry-After parsing the retries use.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx2
import openai

from provider_presets import Provider, display_url

log = logging.getLogger("providers")

MAX_RETRY_AFTER_S = 10.0  # a longer Retry-After is reported to the user, not waited out
MAX_PROVIDER_MESSAGE_CHARS = 200

# Codes where trying the same request again later can succeed (the UI's Retry).
RETRYABLE_CODES = frozenset(
    {"rate_limit", "server", "connection", "timeout", "incomplete", "malformed", "provider_error"}
)


class ProviderError(Exception):
    """A failure with a short user-facing message: `str(exc)` is safe to show."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # Set by the mapping when WE may retry automatically (before the first token).
        self.auto_retry = False

    @property
    def retryable(self) -> bool:
        """Whether pressing Retry later can succeed (not a config or input problem)."""
        return self.code in RETRYABLE_CODES

    def __repr__(self) -> str:
        return f"ProviderError(code={self.code!r}, message={self.message!r}, status={self.status})"


# --------------------------------------------------------------------------------------
# Error mapping (pure functions, unit-testable)

_QUOTA_WORDS = (
    "insufficient_quota",
    "exceeded your current quota",
    "insufficient balance",
    "insufficient_balance",
    "insufficient credit",
    "credits",
    "arrear",
    "欠费",
    "余额不足",
    "billing",
    "payment required",
    "top up",
)
_CONTEXT_WORDS = (
    "context_length",
    "context length",
    "maximum context",
    "context window",
    "too many tokens",
    "token limit",
    "prompt is too long",
    "input length",
    "too long",
    "超长",
    "上下文长度",
)
_IMAGE_WORDS = ("image", "vision", "multimodal", "图片", "图像")
_MODEL_MISSING_WORDS = (
    "model_not_found",
    "model not found",
    "model not exist",
    "model does not exist",
    "no such model",
    "invalid model",
    "unknown model",
    "模型不存在",
    "invalidendpointormodel",
)
_AUTH_WORDS = (
    "invalid_api_key",
    "invalid api key",
    "incorrect api key",
    "unauthorized",
    "authentication",
)
# Zhipu business codes (docs.bigmodel.cn/cn/api/api-code).
_ZHIPU_CODES = {
    **dict.fromkeys(("1000", "1001", "1002", "1003", "1004"), "auth"),
    **dict.fromkeys(
        ("1110", "1111", "1112", "1113", "1121", "1304", "1308", "1309", "1310"), "quota"
    ),
    "1211": "model_not_found",
    "1261": "context_length",
    **dict.fromkeys(("1302", "1303", "1305", "1312"), "rate_limit"),
}


@dataclass(frozen=True)
class ErrorInfo:
    code: str  # provider's own code/type, lower-cased ("insufficient_quota", "1113", ...)
    message: str  # provider's own message, cleaned up


def error_info(body: object, fallback: str = "", secrets: tuple[str, ...] = ()) -> ErrorInfo:
    """Code and message from the error shapes seen in the wild.

    OpenAI `{"error": {"message","type","code"}}` (the SDK hands us the inner object),
    Zhipu `{"code": "1210", "message"}` / `{"code", "msg"}`, LM Studio `{"error": "text"}`
    (inner: a string), OpenRouter "Provider returned error" with `metadata.raw`.
    """
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping | str):
        body = body["error"]
    if isinstance(body, str):
        return ErrorInfo("", clean_text(body, secrets))
    if not isinstance(body, Mapping):
        return ErrorInfo("", clean_text(fallback, secrets))
    codes = [str(body.get(k)) for k in ("code", "type", "error_code") if body.get(k) is not None]
    message = str(body.get("message") or body.get("msg") or body.get("error_msg") or "")
    raw = (
        (body.get("metadata") or {}).get("raw")
        if isinstance(body.get("metadata"), Mapping)
        else None
    )
    if raw:  # OpenRouter: the real provider's error, often JSON in a string
        inner = _parse_json(raw) if isinstance(raw, str) else raw
        inner_info = (
            error_info(inner, str(raw), secrets)
            if inner is not None
            else ErrorInfo("", clean_text(str(raw), secrets))
        )
        codes.append(inner_info.code)
        message = inner_info.message or message
    code = redact(" ".join(c for c in codes if c).lower(), secrets)
    return ErrorInfo(code, clean_text(message or fallback, secrets))


def _parse_json(raw: str) -> object | None:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def clean_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # an HTML error page says little; keep its words
    # Redacted before it is cut: a key cut in half would no longer match and half of it
    # would be shown (and stored with the failed answer).
    text = redact(" ".join(text.split()), secrets)
    # A provider's own words may name where it runs (a proxy's internal URL): not shown.
    text = _URL_LIKE.sub("(a URL)", text)
    if len(text) > MAX_PROVIDER_MESSAGE_CHARS:
        text = text[: MAX_PROVIDER_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


_KEY_LIKE = re.compile(r"\b((?:sk|ak|pk|rk)-[A-Za-z0-9]{0,8})[A-Za-z0-9_\-]{8,}")
# Keys without a known prefix (Ark's are UUIDs, Zhipu's "id.secret", Bearer tokens): any long
# run of letters, digits and - _ . that mixes letters and digits, and bearer credentials.
_TOKEN_LIKE = re.compile(r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[A-Za-z])[\w.-]{32,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]{8,}")
# Addresses that say where the server's own services live (an internal host, a port).
_URL_LIKE = re.compile(r"(?i)\b(?:https?|wss?|redis|rediss)://[^\s'\"<>)]+")


def redact(text: str, secrets: tuple[str, ...]) -> str:
    # Longest first, so a key that contains another is replaced whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1 ***", text)
    text = _KEY_LIKE.sub(r"\1***", text)
    return _TOKEN_LIKE.sub("***", text)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After-Ms / Retry-After (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    with contextlib.suppress(TypeError, ValueError):
        if lowered.get("retry-after-ms"):
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    raw = (lowered.get("retry-after") or "").strip()
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = email.utils.parsedate_to_datetime(raw).timestamp()
        return max(0.0, when - (time.time() if now is None else now))
    return None


def map_exception(
    provider: Provider,
    model: str,
    exc: openai.APIError,
    *,
    mid_stream: bool,
    timeout_s: float,
    secrets: tuple[str, ...] = (),
) -> ProviderError:
    name, prefix = provider.name, provider.env_prefix
    # Users see the public preset address; an operator's own URL stays in the log.
    where = f" at {provider.shown_url}" if provider.shown_url else ""
    if not provider.shown_url and not mid_stream and isinstance(exc, openai.APIConnectionError):
        log.warning("%s unreachable at %s: %s", name, display_url(provider.base_url), exc)
    if isinstance(exc, openai.APITimeoutError):
        if isinstance(exc.__cause__, httpx2.ConnectTimeout | httpx2.PoolTimeout):
            err = ProviderError(
                "timeout",
                f"Cannot reach {name}{where}: the connection timed out. "
                f"Check the network or {prefix}_BASE_URL.",
            )
            err.auto_retry = True
            return err
        return ProviderError(
            "timeout", f"{name} stopped responding (no data for {timeout_s:g} s). Try again."
        )
    if isinstance(exc, openai.APIConnectionError):
        if mid_stream:
            err = ProviderError(
                "connection",
                f"The connection to {name} broke before the answer finished. Press Retry.",
            )
        else:
            err = ProviderError(
                "connection",
                f"Cannot reach {name}{where}. Check the network or {prefix}_BASE_URL.",
            )
        err.auto_retry = True
        return err
    if isinstance(exc, openai.APIStatusError):
        headers = dict(exc.response.headers) if exc.response is not None else {}
        info = error_info(exc.body, exc.message, secrets)
        return map_status(provider, model, exc.status_code, info, parse_retry_after(headers))
    # A `data: {"error": ...}` chunk: the SDK raises a bare APIError.
    return _map_stream_error(provider, model, error_info(exc.body, exc.message, secrets))


def _map_stream_error(provider: Provider, model: str, info: ErrorInfo) -> ProviderError:
    kind = _classify_text(info)
    if kind in ("quota", "context_length", "auth", "image_rejected"):
        return _status_error(provider, model, kind, None, info, None)
    detail = f": {info.message}" if info.message else ""
    return ProviderError(
        "provider_error", f"{provider.name} reported an error mid-answer{detail}. Press Retry."
    )


def _classify_text(info: ErrorInfo) -> str:
    """Best guess from the provider's own code and words; "" when nothing specific."""
    text = f"{info.code} {info.message}".lower()
    for code in info.code.split():
        if code in _ZHIPU_CODES:
            return _ZHIPU_CODES[code]
    if "context_length_exceeded" in text:
        return "context_length"
    if any(word in text for word in _QUOTA_WORDS):
        return "quota"
    if any(word in text for word in _IMAGE_WORDS):
        return "image_rejected"
    if any(word in text for word in _MODEL_MISSING_WORDS):
        return "model_not_found"
    if any(word in text for word in _CONTEXT_WORDS):
        return "context_length"
    if any(word in text for word in _AUTH_WORDS):
        return "auth"
    return ""


def map_status(
    provider: Provider,
    model: str,
    status: int,
    info: ErrorInfo,
    retry_after: float | None = None,
) -> ProviderError:
    """An HTTP error status plus the provider's code/message -> ProviderError."""
    kind = _classify_text(info)
    if status in (401, 403):
        code = "quota" if kind == "quota" else "auth"
    elif status == 402:
        code = "quota"
    elif status == 429:
        code = "quota" if kind == "quota" else "rate_limit"
    elif status == 404:
        code = "model_not_found"
    elif status in (400, 413, 422):
        code = (
            kind
            if kind in ("context_length", "image_rejected", "model_not_found", "quota", "auth")
            else "bad_request"
        )
    elif status == 408 or status >= 500:
        code = "server" if kind not in ("quota", "rate_limit") else kind
    else:
        code = kind if kind in ("quota", "rate_limit", "auth") else "bad_request"
    return _status_error(provider, model, code, status, info, retry_after)


def _status_error(
    provider: Provider,
    model: str,
    code: str,
    status: int | None,
    info: ErrorInfo,
    retry_after: float | None,
) -> ProviderError:
    name, prefix = provider.name, provider.env_prefix
    shown = f" ({status})" if status else ""
    wait = f"wait {math.ceil(retry_after)} s" if retry_after else "wait a moment"
    if code == "auth":
        check = f"Check {provider.key_env}." if provider.key_env else "Check the server's setup."
        message = f"{name} rejected the API key{shown}. {check}"
    elif code == "quota":
        message = f"Your {name} account has no credit left{shown}; top up or switch provider."
    elif code == "rate_limit":
        message = f"{name} is rate-limiting requests{shown}; {wait} and try again."
    elif code == "server":
        message = f"{name} is having trouble{shown}. Try again in a moment or switch provider."
        if retry_after and retry_after > MAX_RETRY_AFTER_S:
            message = f"{name} is having trouble{shown}; {wait} and try again."
    elif code == "context_length":
        message = (
            f"The conversation is too long for {model}. Start a new chat or undo some messages."
        )
    elif code == "image_rejected":
        message = f"{model} could not read the image(s). Remove the image or pick a vision model."
    elif code == "model_not_found":
        message = f"Model {model} is not available at {name}. Pick another model"
        if status == 404 and "model" not in f"{info.code} {info.message}".lower():
            message += f" or check {prefix}_BASE_URL"  # a wrong path also gives a bare 404
        message += "."
    else:
        detail = f": {info.message}" if info.message else "."
        message = f"{name} refused the request{shown}{detail}"
    err = ProviderError(code, message, status=status, retry_after=retry_after)
    # Only what can succeed is retried, and never a wait longer than MAX_RETRY_AFTER_S.
    err.auto_retry = code in ("rate_limit", "server") and (
        retry_after is None or retry_after <= MAX_RETRY_AFTER_S
    )
    return err


def disabled_message(provider: Provider) -> str:
    if provider.hint and "must be" in provider.hint:
        return f"{provider.name} is not configured: {provider.hint}"
    return f"{provider.name} is not configured: set {provider.setup_env}."
