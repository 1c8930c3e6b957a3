"""Settings from the environment (then `.env`), and the roles (personas).

Nothing here imports gradio: every other module reads its settings from here.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import load_dotenv

# The real environment wins over .env (override=False), so a Space's variables or a
# test's subprocess environment are never shadowed by a stray .env file.
load_dotenv(override=False)

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


@dataclass(frozen=True)
class Price:
    """A model's price per 1 million tokens."""

    input: float
    output: float
    currency: str


PRICES_FILE = Path(__file__).with_name("prices.json")


@functools.cache
def load_prices(path: str | None = None) -> tuple[str, dict[str, Price]]:
    """(as_of date, prices by model) from prices.json, or from PRICES_FILE when set."""
    source = Path(path or os.environ.get("PRICES_FILE") or PRICES_FILE)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        models = {
            name: Price(float(p["input"]), float(p["output"]), str(p.get("currency", "USD")))
            for name, p in data["models"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"Cannot read the price table {source}: {exc}") from None
    return str(data.get("as_of", "")), models


def price_of(model: str) -> Price | None:
    """The price of a model, by its name or (OpenRouter's vendor/model) the part after '/'."""
    _, prices = load_prices()
    return prices.get(model) or prices.get(model.rsplit("/", 1)[-1])


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
    # Abuse limits (limits.py): messages per minute per browser (or API caller) and per IP;
    # 0 turns a limit off. The per-IP default is 3x, since people can share an address.
    rate_limit_per_minute: int = 20
    rate_limit_per_ip_per_minute: int = 60
    provider_connect_timeout_s: float = 5.0

    @property
    def history_ttl_seconds(self) -> int:
        return self.history_ttl_days * 86_400

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
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
        provider_connect_timeout_s=_float(env, "PROVIDER_CONNECT_TIMEOUT_SECONDS", 5.0, 0.1),
    )
