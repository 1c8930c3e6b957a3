"""The refusals of a turn, shared by the chat modules (chat.py re-exports them)."""

from __future__ import annotations


class ChatError(Exception):
    """A refusal before anything was sent: str() is the user-facing message."""


class ChatRateLimited(ChatError):
    """Over the rate limit; `retry_after` whole seconds to wait (an HTTP API's Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
