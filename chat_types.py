"""The values a turn takes and gives: the request, its plan, the update snapshots, and what
undo and open return (chat.py re-exports them)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from config import DEFAULT_ROLE
from providers import Finished, Provider

STOPPED = "Stopped."  # the error of an answer the user (or a closed client) stopped


class Status(StrEnum):
    """Where an answer stands; the stored values are these strings."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    ERROR = "error"


@dataclass
class TurnRequest:
    text: str = ""
    images: Sequence[str] = ()  # file paths (uploads)
    role: str = DEFAULT_ROLE
    system_prompt: str = ""  # a custom prompt; wins over the role's when given
    provider: str = ""
    model: str = ""
    detail: str = "auto"
    conversation_id: str = ""
    browser_id: str | None = None  # None: an API turn, not listed under any browser
    client_ip: str | None = None  # for the per-IP rate limit only; never stored
    temperature: float | None = None  # None: the provider's default
    max_tokens: int | None = None
    top_p: float | None = None
    # The user's own keys (bring your own key), by provider id: used for this turn only,
    # never stored or logged.
    api_keys: Mapping[str, str] = field(default_factory=dict)

    def api_key(self, provider_id: str) -> str | None:
        return (self.api_keys or {}).get(provider_id) or None

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p}


@dataclass(frozen=True)
class Plan:
    """How a request is answered: provider, model, prompt and settings, all checked."""

    provider: Provider
    model: str
    system_prompt: str
    detail: str
    sampling: dict  # temperature, max_tokens (bounded by MAX_OUTPUT_TOKENS), top_p
    api_key: str | None = None


@dataclass(frozen=True)
class TurnUpdate:
    """The answer so far, a snapshot (each update is a new object); the last has `done=True`.

    `messages`: the stored conversation, on the first update (what the answer follows) and
    on the last (with the answer, as saved; None when it could not be saved), None between
    and for stateless turns.
    """

    conversation_id: str
    answer: str = ""
    reasoning: str = ""
    done: bool = False
    status: Status = Status.STREAMING
    error: str | None = None
    provider: str = ""
    model: str = ""
    receipts: tuple[str, ...] = ()
    usage: dict | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    error_code: str | None = None  # ProviderError.code when a provider failed (HTTP API)
    finished: Finished | None = field(default=None, repr=False)  # the provider's last event
    first_token_at: float | None = field(default=None, repr=False)  # time.monotonic()
    messages: tuple[dict, ...] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Undone:
    """What undo took back: the user's text and images (local files, for the input box)."""

    text: str
    image_paths: list[str]
    messages: tuple[dict, ...]  # the conversation left


@dataclass(frozen=True)
class Opened:
    """A conversation opened by its browser."""

    meta: dict
    messages: tuple[dict, ...]
