"""Signed-in accounts: the `APP_AUTH` list, who a request is signed in as, and the stable id
that keys an account's conversations.

Without a login the app's conversations belong to a browser (a random id in its encrypted
BrowserState). With one they belong to the account, so the same person sees the same list
from any browser and two people never see each other's: the account's "browser id" is
derived from the account, not drawn at random (`account_browser_id`).

No UI here and no gradio at run time: the Gradio types are only read (`username`, the
profile's claims), so this module is testable alone.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

# The ways of signing in; each has its own id space, so a password account "alice" and the
# Hugging Face user "alice" are two accounts.
KINDS = ("password", "hf")
ID_CHARS = 32  # as history_records.new_id: 128 bits in lowercase hex
_PIECES = re.compile(r"[,\r\n]+")  # pairs are always separated by commas and new lines


def parse_accounts(value: str | None) -> list[tuple[str, str]]:
    """`APP_AUTH` / `--auth` as (user, password) pairs, in order.

    Pairs are separated by commas or new lines, and by spaces when every space-separated
    word is itself a `user:password` pair. Each pair splits at its FIRST colon (a password
    may hold colons). A password with a space still works where the words after the space
    have no colon: `alice:wonder land` is one pair, as it was before lists.

    Raises ValueError (a message that never shows a password) for a pair without a colon,
    an empty user or password, a user listed twice, or spaces that could be read both ways.
    """
    pairs: list[tuple[str, str]] = []
    for piece in _PIECES.split(value or ""):
        for entry in _entries(piece.strip()):
            pairs.append(_pair(entry, len(pairs) + 1))
    seen: set[str] = set()
    for user, _ in pairs:
        if user in seen:
            raise ValueError(f"user {user!r} is listed twice")
        seen.add(user)
    return pairs


def _entries(piece: str) -> list[str]:
    """One comma/new-line piece as its `user:password` entries (see parse_accounts)."""
    words = piece.split()
    if len(words) <= 1 or all(":" in word for word in words):
        return words
    if ":" in words[0] and not any(":" in word for word in words[1:]):
        return [piece]  # one pair whose password has spaces
    raise ValueError("cannot tell where a password with spaces ends; put commas between pairs")


def _pair(entry: str, number: int) -> tuple[str, str]:
    user, colon, password = entry.partition(":")
    if not colon:  # not echoed: it may be a password whose user was forgotten
        raise ValueError(f"pair {number} has no colon")
    if not user:
        raise ValueError(f"pair {number} has an empty user name")
    if not password:
        raise ValueError(f"user {user!r} has an empty password")
    return user, password


def account_browser_id(secret: str, kind: str, username: str) -> str:
    """The id that keys an account's conversations, where a browser's random id would.

    HMAC-SHA256 of the kind and the user name under a secret that stays on the server (not
    the BrowserState's, which Gradio sends to the page: see ui_state.account_secret), cut
    to 32 lowercase hex characters (the shape of every other browser id): the same on every
    restart and replica that share the secret, impossible to work out without it, and
    different for each kind. The kind is fixed and has no colon, so `kind:username` is
    never ambiguous."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not username:
        raise ValueError("an account needs a user name")
    if not secret:
        raise ValueError("an account id needs the app's secret")
    message = f"account:{kind}:{username}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:ID_CHARS]


def signed_in(
    request: gr.Request | None, profile: gr.OAuthProfile | None
) -> tuple[str, str] | None:
    """Who the request is signed in as: ("hf", the Hugging Face account) when Gradio gave an
    OAuth profile, else ("password", the user name) when Gradio's own login (`auth=`) let it
    in, else None (no login: conversations stay per browser).

    The Hugging Face account is named by its OpenID `sub` claim (the account's permanent
    id), not the user name: a user name can be changed and then taken by someone else, who
    would inherit the old owner's conversations. Only a profile without `sub` (OpenID
    requires it) falls back to the user name."""
    if profile is not None:
        account = str(profile.get("sub") or "") or profile.username
        if account:
            return "hf", account
    username = getattr(request, "username", None) if request is not None else None
    if isinstance(username, str) and username:
        return "password", username
    return None


def hf_oauth_enabled() -> bool:
    """True on a Space whose README says `hf_oauth: true` (the Space then sets
    OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPES and OPENID_PROVIDER_URL)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID", "").strip())
