"""Settings from the environment (then `.env`), and the roles (personas).

Nothing here imports gradio: every other module reads its settings from here.

Plain parsing, not pydantic-settings: `load_settings(environ)` takes any mapping (tests pass
a dict), several defaults derive from other variables (per-IP = 3x per-browser, proxy hops on
a Space), and each bad value stops the app with a one-line message naming the variable; a
BaseSettings class needed aliases, a custom source and an error translator to keep all that,
and came out no smaller. Values the app accepts but would misuse are warned about in
startup_checks.py.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

VERSION = "1.0.0"  # reported by GET /health


@dataclass(frozen=True)
class Role:
    id: str
    name: str
    prompt: str

    def public_info(self) -> dict:
        return {"id": self.id, "name": self.name, "prompt": self.prompt}


# The seed service's three roles, with prompts written for both Chinese and English users:
# the model answers in the user's language either way.
ROLES: dict[str, Role] = {
    role.id: role
    for role in (
        Role(
            "assistant",
            "Assistant · 助手",
            "You are a helpful, honest and concise assistant. Answer in the language the user "
            "writes in (reply in Chinese to Chinese, in English to English). Use Markdown where "
            "it helps: lists, tables, code blocks, and LaTeX ($...$) for formulas. When an image "
            "is attached, look at it carefully and refer to what you actually see. If you are "
            "not sure, say so instead of guessing.\n"
            "你是一个乐于助人、诚实而简洁的助手。用用户所用的语言回答。适当使用 Markdown。"
            "用户附上图片时，请仔细观察并基于图片中实际可见的内容作答；不确定时请直说。",
        ),
        Role(
            "teacher",
            "Teacher · 老师",
            "You are a patient, encouraging teacher. Explain step by step, starting from what "
            "the learner already knows; use simple words, a concrete example and, where useful, "
            "a short analogy. For exercises, guide with hints before giving the full solution, "
            "and finish with one question that checks understanding. Answer in the learner's "
            "language and use LaTeX ($...$) for maths.\n"
            "你是一位耐心、善于鼓励的老师。请循序渐进地讲解，从学生已知的知识出发，用简单的语言、"
            "具体的例子和恰当的类比。遇到习题时先给提示再给完整解答，最后提一个检查理解的小问题。"
            "用学生的语言回答，数学公式使用 LaTeX。",
        ),
        Role(
            "programmer",
            "Programmer · 程序员",
            "You are a senior software engineer. Give correct, idiomatic, runnable code in fenced "
            "code blocks with the language named; explain the key decisions briefly; point out "
            "edge cases, errors and security issues; prefer the standard library and well-kept "
            "packages. When reviewing a screenshot of code or an error, quote the relevant lines "
            "first. Answer in the user's language; code and identifiers stay in English.\n"
            "你是一名资深软件工程师。给出正确、地道、可运行的代码（使用标明语言的代码块），简要说明"
            "关键取舍，指出边界情况、错误处理和安全问题。用用户的语言回答，代码与标识符保持英文。",
        ),
    )
}
DEFAULT_ROLE = "assistant"
CUSTOM_ROLE = "custom"


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE | _FALSE:
        raise SystemExit(f"{name} must be true or false, got {raw!r}")
    return raw in _TRUE


def _networks(environ: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """A comma list of IPs / CIDRs (None when unset, () for "none"), checked at start."""
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    if raw.lower() == "none":
        return ()
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise SystemExit(
                f"{name} must list IP addresses or networks (e.g. 10.0.0.0/8), got {item!r}"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    app_secret: str | None
    default_provider: str | None
    history_ttl_days: int = 7
    history_context_messages: int = 20
    history_max_messages: int = 200
    max_image_mb: float = 20.0
    max_images_per_message: int = 8
    max_message_chars: int = 20_000
    provider_timeout_s: float = 60.0
    app_auth: str | None = None
    max_threads: int = 400
    concurrency_limit: int | None = None  # per event; None = no limit (streaming is I/O-bound)
    # Abuse limits (chat_budgets.py, rate_limits.py): messages per minute per browser (or API
    # caller) and per IP; 0 turns a limit off. The per-IP default is 3x, since people can
    # share an address.
    rate_limit_per_minute: int = 20
    rate_limit_per_ip_per_minute: int = 60
    # Every other budget a stranger can spend (chat_budgets.py, upload_limits.py; docs/security.md):
    # per client (browser, or an API caller's address), per IP (3x, not for loopback) and a
    # global ceiling for everyone together (loopback too: a share link arrives from there).
    rate_limit_global_per_minute: int = 600  # turns of everyone: default 30x the per-browser
    imports_per_minute: int = 10
    imports_global_per_minute: int = 60
    checks_per_minute: int = 3  # "Check providers" (spends the server's keys)
    checks_global_per_minute: int = 20
    uploads_per_minute: int = 60  # upload requests per address (uploads carry no browser id)
    uploads_global_per_minute: int = 600
    upload_mb_per_minute: float = 200.0
    upload_global_mb_per_minute: float = 1000.0
    max_upload_disk_mb: float = 2048.0  # everything under the upload dir (GRADIO_TEMP_DIR)
    upload_max_age_hours: float = 24.0  # uploads, exports and cached images older: deleted
    image_megapixels_per_minute: int = 500  # decoded image pixels (CPU) per client
    image_megapixels_global_per_minute: int = 2000
    max_stored_mb_per_browser: float = 200.0  # conversations + images a browser keeps
    max_output_tokens: int = 8192  # the most a turn may ask the model to write
    provider_connect_timeout_s: float = 5.0
    # Client addresses (client_address.py): the proxies whose X-Forwarded-For is believed.
    # None = loopback only (a local nginx); () = none. Hops: that many proxies in front,
    # whatever their address (1 on a Hugging Face Space); when set it wins over the list.
    trusted_proxies: tuple[str, ...] | None = None
    trusted_proxy_hops: int = 0
    max_request_mb: float = 32.0  # the largest /api/chat body read (8 resized images fit)
    # An attached document (documents.py): its size, and the characters of its text the
    # model gets (the rest is cut, and the receipt says so).
    max_document_mb: float = 10.0
    max_document_chars: int = 100_000
    max_login_failures: int = 10  # wrong passwords per address per window, then 429; 0 = off
    login_window_s: float = 300.0
    # After a conversation's first answer the model names it (auto_title.py); False keeps
    # the first message as the title and saves that request.
    auto_title: bool = True
    # Tools (tools.py, tool_builtin.py, tool_amap.py): TOOLS is the default set, a comma list
    # of names ("" = none, so requests stay as they were); a turn runs at most
    # max_tool_rounds model calls with tool results. The AMap key enables the geo tools; it
    # is kept out of repr() so a logged Settings never shows it.
    tools: str = ""
    max_tool_rounds: int = 5
    amap_api_key: str | None = field(default=None, repr=False)
    amap_base_url: str = "https://restapi.amap.com"

    @property
    def history_ttl_seconds(self) -> int:
        return self.history_ttl_days * 86_400

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_document_bytes(self) -> int:
        return int(self.max_document_mb * 1024 * 1024)

    @property
    def max_stored_bytes_per_browser(self) -> int:
        return int(self.max_stored_mb_per_browser * 1024 * 1024)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `environ`, or of the process environment and then the working
    directory's `.env` (read here, not at import). The real environment wins over .env
    (override=False): a Space's variables or a test's environment are never shadowed."""
    if environ is None:
        load_dotenv(find_dotenv(usecwd=True), override=False)
    env = os.environ if environ is None else environ
    return Settings(
        redis_url=(env.get("REDIS_URL") or "").strip() or None,
        app_secret=(env.get("APP_SECRET") or "").strip() or None,
        default_provider=(env.get("DEFAULT_PROVIDER") or "").strip().lower() or None,
        history_ttl_days=_int(env, "HISTORY_TTL_DAYS", 7, minimum=1),
        history_context_messages=_int(env, "HISTORY_CONTEXT_MESSAGES", 20, minimum=1),
        history_max_messages=_int(env, "HISTORY_MAX_MESSAGES", 200, minimum=2),
        max_image_mb=_float(env, "MAX_IMAGE_MB", 20.0, minimum=0.01),
        max_images_per_message=_int(env, "MAX_IMAGES_PER_MESSAGE", 8, minimum=1),
        max_message_chars=_int(env, "MAX_MESSAGE_CHARS", 20_000, minimum=1),
        provider_timeout_s=_float(env, "PROVIDER_TIMEOUT_SECONDS", 60.0, minimum=1),
        app_auth=(env.get("APP_AUTH") or "").strip() or None,
        max_threads=_int(env, "MAX_THREADS", 400, minimum=1),
        concurrency_limit=_int(env, "CONCURRENCY_LIMIT", 0, minimum=0) or None,
        rate_limit_per_minute=(per_minute := _int(env, "RATE_LIMIT_PER_MINUTE", 20)),
        rate_limit_per_ip_per_minute=_int(env, "RATE_LIMIT_PER_IP_PER_MINUTE", 3 * per_minute),
        # everyone together: 30 people at the per-browser limit (0 with the limits off)
        rate_limit_global_per_minute=_int(env, "RATE_LIMIT_GLOBAL_PER_MINUTE", 30 * per_minute),
        imports_per_minute=_int(env, "IMPORTS_PER_MINUTE", 10),
        imports_global_per_minute=_int(env, "IMPORTS_GLOBAL_PER_MINUTE", 60),
        checks_per_minute=_int(env, "CHECKS_PER_MINUTE", 3),
        checks_global_per_minute=_int(env, "CHECKS_GLOBAL_PER_MINUTE", 20),
        uploads_per_minute=_int(env, "UPLOADS_PER_MINUTE", 60),
        uploads_global_per_minute=_int(env, "UPLOADS_GLOBAL_PER_MINUTE", 600),
        upload_mb_per_minute=_float(env, "UPLOAD_MB_PER_MINUTE", 200.0),
        upload_global_mb_per_minute=_float(env, "UPLOAD_GLOBAL_MB_PER_MINUTE", 1000.0),
        max_upload_disk_mb=_float(env, "MAX_UPLOAD_DISK_MB", 2048.0),
        upload_max_age_hours=_float(env, "UPLOAD_MAX_AGE_HOURS", 24.0, minimum=0.001),
        image_megapixels_per_minute=_int(env, "IMAGE_MEGAPIXELS_PER_MINUTE", 500),
        image_megapixels_global_per_minute=_int(env, "IMAGE_MEGAPIXELS_GLOBAL_PER_MINUTE", 2000),
        max_stored_mb_per_browser=_float(env, "MAX_STORED_MB_PER_BROWSER", 200.0),
        max_output_tokens=_int(env, "MAX_OUTPUT_TOKENS", 8192, minimum=1),
        provider_connect_timeout_s=_float(env, "PROVIDER_CONNECT_TIMEOUT_SECONDS", 5.0, 0.1),
        trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
        # A Space (SPACE_ID is set there) is reached only through its one proxy.
        trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", 1 if env.get("SPACE_ID") else 0),
        max_request_mb=_float(env, "MAX_REQUEST_MB", 32.0, minimum=0.01),
        max_document_mb=_float(env, "MAX_DOCUMENT_MB", 10.0, minimum=0.01),
        max_document_chars=_int(env, "MAX_DOCUMENT_CHARS", 100_000, minimum=1),
        max_login_failures=_int(env, "MAX_LOGIN_FAILURES", 10),
        login_window_s=_float(env, "LOGIN_WINDOW_SECONDS", 300.0, minimum=1),
        auto_title=_bool(env, "AUTO_TITLE", True),
        tools=",".join(p.strip() for p in (env.get("TOOLS") or "").split(",") if p.strip()),
        max_tool_rounds=_int(env, "MAX_TOOL_ROUNDS", 5, minimum=1),
        amap_api_key=(env.get("AMAP_API_KEY") or "").strip() or None,
        amap_base_url=(env.get("AMAP_BASE_URL") or "").strip().rstrip("/")
        or "https://restapi.amap.com",
    )


def upload_dir() -> Path:
    """Where Gradio keeps uploads and its cache (GRADIO_TEMP_DIR, as Gradio reads it)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
