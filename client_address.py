"""Who the client is: its address behind trusted proxies, and failed logins per address.

Per-IP limits and the login throttle need the real client address. Behind a reverse proxy
the TCP peer is the proxy and the client is in `X-Forwarded-For`, which each proxy appends
to. Everything left of what our own proxies wrote is the client's own word and can be
forged, so the address is the RIGHT-MOST entry that is not one of our proxies:

- `TRUSTED_PROXIES` (default: loopback, so a local nginx works; `none` trusts nobody): only
  a peer in this list is believed, and trusted entries are skipped from the right.
- `TRUSTED_PROXY_HOPS` (default 0; 1 on a Hugging Face Space, where `SPACE_ID` is set): that
  many proxies are in front whatever their address; the client is the entry the outermost
  one wrote (`X-Forwarded-For[-hops]`). When set it wins over the list.

Uvicorn's own rewrite (`FORWARDED_ALLOW_IPS`) is switched off by `app.main()`: told to trust
`*` it takes the LEFT-most entry, which the client chooses. A peer that is not trusted, or
sends no `X-Forwarded-For`, is itself the client (a share link arrives from loopback).

Also here: whether a request comes from the app's own page (same origin), and the guards
built on these (the login throttle, the cross-site guard). Nothing here imports gradio,
chat or app.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

# A module import (not `from`): http_guards imports this module too, for client_ip, and a
# module import works whichever of the two is imported first.
import http_guards

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = ("127.0.0.0/8", "::1/128")


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a forwarded entry: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:  # IPv4 with a port (an IPv6 address has 2+ colons)
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ProxyTrust:
    """Which peers' X-Forwarded-For is believed, and how the client is read from it."""

    def __init__(self, networks: Iterable[str] = LOOPBACK, hops: int = 0) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        self.hops = max(0, hops)

    def trusts(self, address: Any) -> bool:
        return address is not None and any(
            address.version == net.version and address in net for net in self.networks
        )

    def behind_proxy(self, peer: str | None) -> bool:
        """True when the peer is one of our proxies (its forwarded headers are believed)."""
        return self.hops > 0 or self.trusts(_ip(peer or ""))

    def client(self, peer: str | None, forwarded_for: list[str]) -> str | None:
        """The client address for a connection from `peer` with these X-Forwarded-For values
        (each header line as sent; several lines count as one list, in order)."""
        if not self.behind_proxy(peer):
            return peer
        entries = [e.strip() for line in forwarded_for for e in line.split(",") if e.strip()]
        if not entries:
            return peer
        if self.hops:
            chosen = entries[-self.hops] if len(entries) >= self.hops else entries[0]
            address = _ip(chosen)
        else:
            address = None
            for entry in reversed(entries):
                address = _ip(entry)
                if not self.trusts(address):
                    break
            # Every entry trusted: the client is itself one of our hosts (leftmost).
        # Not an address at all ("unknown", junk): our proxy did not write it; keep the peer.
        return str(address) if address is not None else peer

    def describe(self) -> str:
        if self.hops:
            return f"the {self.hops} nearest proxy hop(s), whatever their address"
        if not self.networks:
            return "nobody (the header is ignored)"
        return ", ".join(str(n) for n in self.networks)


_trust: ProxyTrust | None = None
_lock = threading.Lock()


def configure(settings: Any, *, share: bool = False) -> ProxyTrust:
    """Set the proxy trust and the login throttle from Settings (app.main calls it once).

    With a share link and no explicit TRUSTED_PROXIES, loopback is not trusted: the tunnel
    client runs on this machine, and whether it passes a visitor's own X-Forwarded-For on
    cannot be known here (its visitors then count as loopback, under the global limits)."""
    global _trust, failed_logins
    proxies = settings.trusted_proxies
    if proxies is None:
        proxies = () if share else LOOPBACK
    _trust = ProxyTrust(proxies, settings.trusted_proxy_hops)
    failed_logins = FailedLogins(settings.max_login_failures, settings.login_window_s)
    return _trust


def trust() -> ProxyTrust:
    """The configured trust; read from the environment on first use when not configured
    (`gradio app.py`, tests importing the app)."""
    global _trust
    if _trust is None:
        with _lock:
            if _trust is None:
                import config

                configure(config.load_settings())
    assert _trust is not None
    return _trust


def _header_values(headers: Any, name: str) -> list[str]:
    if headers is None:
        return []
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        return [str(v) for v in getlist(name)]
    getter = getattr(headers, "get", None)
    value = getter(name) if callable(getter) else None
    return [str(value)] if value else []


def peer_of(request: Any) -> str | None:
    try:
        host = request.client.host
    except AttributeError:
        return None
    return host if isinstance(host, str) and host else None


def client_address(request: Any) -> str | None:
    """The client address of a gr.Request or a Starlette request (None when unknown)."""
    try:
        headers = request.headers
    except AttributeError:
        headers = None
    return trust().client(peer_of(request), _header_values(headers, "x-forwarded-for"))


def scope_address(scope: dict) -> str | None:
    """The same for a raw ASGI scope (middlewares)."""
    client = scope.get("client")
    peer = client[0] if client else None
    values = [
        value.decode("latin-1")
        for name, value in scope.get("headers") or []
        if name == b"x-forwarded-for"
    ]
    return trust().client(peer, values)


def forwarded_hosts(request: Any) -> list[str]:
    """Hosts the app may be reached at, for same-origin checks: the Host header, and the
    X-Forwarded-Host values when the peer is one of our proxies."""
    headers = getattr(request, "headers", None)
    hosts = _header_values(headers, "host")
    if trust().behind_proxy(peer_of(request)):
        for line in _header_values(headers, "x-forwarded-host"):
            hosts += [h.strip() for h in line.split(",") if h.strip()]
    return hosts


# -- same origin -------------------------------------------------------------------------------
def _netloc(value: str, scheme: str = "") -> str:
    """`host[:port]` in lower case, without the scheme's default port."""
    value = value.strip().lower()
    for default, port in (("http", ":80"), ("https", ":443")):
        if value.endswith(port) and scheme in ("", default):
            return value[: -len(port)]
    return value


def request_origin(request: Any) -> str | None:
    """The netloc of the page that sent the request: Origin, else Referer (None: neither;
    "null" for an opaque origin such as a sandboxed frame or a file)."""
    headers = getattr(request, "headers", None) or {}
    origin = headers.get("origin") or headers.get("referer")
    if not origin:
        return None
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "null"
    return _netloc(parts.netloc.rsplit("@", 1)[-1], parts.scheme)


def from_other_site(request: Any) -> bool | None:
    """True when a page elsewhere sent the request, False when the app's own page did, None
    when it cannot be told (no Sec-Fetch-Site, Origin or Referer: curl, gradio_client).

    The browser's own Sec-Fetch-Site wins (a page cannot set it, and it holds behind any
    proxy); else Origin (or Referer) must name this app: its Host header, or X-Forwarded-Host
    when the request came through one of our trusted proxies."""
    headers = getattr(request, "headers", None) or {}
    site = (headers.get("sec-fetch-site") or "").strip().lower()
    if site == "same-origin":
        return False
    if site in ("same-site", "cross-site"):
        return True
    origin = request_origin(request)
    if origin is None:
        return None
    return origin not in {_netloc(h) for h in forwarded_hosts(request)}


def login_configured(app: Any) -> bool:
    """True when Gradio's App has a login (--auth / APP_AUTH, or an auth_dependency)."""
    return any(getattr(app, name, None) is not None for name in ("auth", "auth_dependency"))


class CrossSiteGuard:
    """ASGI middleware: with a login (--auth / APP_AUTH), a POST (PUT, PATCH, DELETE) that a
    page on another site sent is refused with a 403 before the app reads it. Gradio's CORS
    lets any origin send credentialed requests to a public host, so without this a page
    elsewhere could run the queue with a visitor's login cookie. Requests without Origin or
    Referer (gradio_client, curl) pass: a browser always sends Origin with a cross-site POST.
    /api/chat does its own, stricter check (http_routes.py)."""

    UNSAFE = ("POST", "PUT", "PATCH", "DELETE")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") not in self.UNSAFE:
            await self.app(scope, receive, send)
            return
        if login_configured(scope.get("app")) and from_other_site(Request(scope)):
            message = "This request came from another site: use the app from its own page."
            await http_guards.send_json(send, 403, _error_body(message, "cross_origin"))
            return
        await self.app(scope, receive, send)


# -- failed logins per address ------------------------------------------------------------------
class FailedLogins:
    """A sliding window of failed logins per address, in this process (enough for a login
    throttle: a replica that forgets on restart still bounds guessing to a few per minute).

    `limit` failures per `window_s`, then `retry_after()` says how long to wait. The table
    keeps at most `max_addresses`, dropping the longest-idle first."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 300.0,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(0, limit)
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, address: str | None) -> int:
        """Whole seconds to wait before the next attempt (0: go ahead)."""
        if not self.limit:
            return 0
        key = address or "unknown"
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[-self.limit] + self.window_s - now))

    def failed(self, address: str | None) -> None:
        if not self.limit:
            return
        key = address or "unknown"
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.limit)
                while len(self._failures) > self.max_addresses:
                    self._failures.popitem(last=False)
            self._failures.move_to_end(key)
            times.append(now)


def too_many_logins_message(wait: int) -> str:
    return f"Too many failed logins from your address: wait {wait} s and try again."


failed_logins = FailedLogins()  # replaced by configure()


def _error_body(message: str, code: str) -> bytes:
    """ "detail" as FastAPI's own errors (what Gradio's pages read), "error" as ours."""
    return json.dumps({"detail": message, "error": {"message": message, "code": code}}).encode()


class LoginThrottle:
    """ASGI middleware on Gradio's `POST /login`: an address with too many failed logins
    (Gradio answers a wrong password with 400) gets a 429 with Retry-After before its
    attempt is even read. HTTP Basic failures on /api/chat count in the same table."""

    def __init__(self, app: Any, paths: tuple[str, ...] = ("/login",)) -> None:
        self.app = app
        self.paths = paths

    def _applies(self, scope: dict) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path = scope.get("path", "").rstrip("/")
        root = (scope.get("root_path") or "").rstrip("/")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path in self.paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        address = scope_address(scope)  # first: it may configure() on first use
        guard = failed_logins
        wait = guard.retry_after(address)
        if wait:
            body = _error_body(too_many_logins_message(wait), "rate_limited")
            await http_guards.send_json(send, 429, body, [(b"retry-after", str(wait).encode())])
            return

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message.get("status") in (400, 401):
                guard.failed(address)
            await send(message)

        await self.app(scope, receive, watched_send)
