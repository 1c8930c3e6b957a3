"""Bounds on Gradio's upload route (`POST /gradio_api/upload`): anyone who can load the page
can call it, without a session, so it gets the same budgets as everything else.

- per address (not loopback: a share link's tunnel arrives from there) and globally: upload
  requests per minute (UPLOADS_PER_MINUTE) and megabytes per minute (UPLOAD_MB_PER_MINUTE),
  charged from Content-Length before the body is read and, for a body without one (or
  longer than it said), while it streams;
- the whole upload dir (GRADIO_TEMP_DIR) stays under MAX_UPLOAD_DISK_MB: a request that
  would pass it is refused with a 507;
- old files go: Gradio's own `delete_cache` removes this app's uploads and cached files after
  UPLOAD_MAX_AGE_HOURS (app.py), this module removes the chat's re-creatable image files
  (`chat-images`, re-materialised from Redis when shown; ChatService.image_path touches a
  file each time it is shown, so an image on screen is never the oldest) and, only when the
  dir is over its limit, any cached upload older than that age (files left by an earlier run).

Refusals are small JSON bodies `{"error": "..."}` with 413, 429 (+ Retry-After) or 507.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

from chat import ChatRateLimited
from http_guards import WatchedSend, client_ip, send_json

log = logging.getLogger("uploads")

CHARGE_STEP = 1024 * 1024  # a body without Content-Length is charged in steps of 1 MiB
REFRESH_S = 10.0  # the disk total is re-measured at most this often (between, it is summed)
SWEEP_EVERY_S = 600.0
CHAT_IMAGES = "chat-images"
_HASH_DIR = re.compile(r"[0-9a-f]{32,64}")  # Gradio's cache: <upload dir>/<hash>/<file name>


class DiskUsage:
    """The bytes under the upload dir, measured in a thread at most every REFRESH_S, plus
    what was admitted since; and the sweep of old files."""

    def __init__(self, root: Path, max_age_s: float) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self._measured = 0
        self._added = 0
        self._at = -REFRESH_S
        self._lock = asyncio.Lock()

    def add(self, size: int) -> None:
        self._added += max(0, size)

    async def total(self, *, fresh: bool = False) -> int:
        async with self._lock:
            if fresh or time.monotonic() - self._at >= REFRESH_S:
                self._measured = await asyncio.to_thread(self.measure)
                self._added, self._at = 0, time.monotonic()
        return self._measured + self._added

    def measure(self) -> int:
        total = 0
        for path in _files(self.root):
            try:
                total += path.lstat().st_size
            except OSError:
                continue
        return total

    def sweep(self, *, pressure: bool = False) -> int:
        """Delete old chat image files (always) and, under pressure, old cached uploads;
        returns the bytes freed. Only regular files in the app's own layout are touched."""
        cutoff = time.time() - self.max_age_s
        freed = 0
        places = [self.root / CHAT_IMAGES]
        if pressure and self.root.is_dir():
            places += [p for p in self.root.iterdir() if _HASH_DIR.fullmatch(p.name)]
        for place in places:
            for path in _files(place):
                try:
                    info = path.lstat()
                    if info.st_mtime < cutoff:  # by mtime: a file shown again is touched
                        path.unlink()
                        freed += info.st_size
                except OSError:
                    continue
            if place.name != CHAT_IMAGES:
                _remove_if_empty(place)
        if freed:
            log.info("upload dir: %d MB of old files deleted", freed // (1024 * 1024))
        return freed


def _files(root: Path):
    """Regular files under root (symlinks neither followed nor counted)."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                yield path


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


class _Refused(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class UploadLimits:
    """ASGI middleware: the budgets and the disk limit above, for POST .../gradio_api/upload.

    `service` is the ChatService (its `check_budget` keeps the counts in Redis, shared by
    replicas); `client_ip_of` gives a request's client address (http_guards.client_ip)."""

    def __init__(
        self,
        app: Any,
        *,
        service: Any,
        upload_dir: Path,
        max_disk_bytes: int,
        max_age_s: float,
        max_request_bytes: int,
        client_ip_of: Callable[[Any], str | None] = client_ip,
    ) -> None:
        self.app = app
        self.service = service
        self.disk = DiskUsage(upload_dir, max_age_s)
        self.max_disk_bytes = max_disk_bytes
        self.max_request_bytes = max_request_bytes
        self.client_ip_of = client_ip_of
        self._swept_at = time.monotonic()
        self._sweeping: asyncio.Task | None = None

    @staticmethod
    def applies(scope: dict) -> bool:
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").rstrip("/").endswith("/gradio_api/upload")
        )

    def _maybe_sweep(self) -> None:
        """Every SWEEP_EVERY_S, on some request, in a thread, never waited for."""
        if time.monotonic() - self._swept_at < SWEEP_EVERY_S:
            return
        if self._sweeping is not None and not self._sweeping.done():
            return
        self._swept_at = time.monotonic()
        self._sweeping = asyncio.create_task(asyncio.to_thread(self.disk.sweep))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            self._maybe_sweep()
        if not self.applies(scope):
            await self.app(scope, receive, send)
            return
        ip = self.client_ip_of(Request(scope))
        declared_raw = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(declared_raw) if declared_raw and declared_raw.isdigit() else None
        seen = 0
        watched = WatchedSend(send)
        try:
            await self._admit(ip, declared)
            charged = declared or 0
            on_disk = await self.disk.total()

            async def counted_receive() -> dict:
                nonlocal seen, charged
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    self._check_size(seen)
                    if seen > charged:  # no Content-Length, or more than it said
                        step = max(CHARGE_STEP, seen - charged)
                        await self._charge_bytes(ip, step)
                        charged += step
                    if on_disk + seen > self.max_disk_bytes:
                        raise self._full()
                return message

            try:
                await self.app(scope, counted_receive, watched)
            except Exception as exc:
                # Ours, raised inside the app's read of the body (it may wrap it in its own).
                refused = exc if isinstance(exc, _Refused) else _cause(exc)
                if refused is None or watched.started:
                    raise
                raise refused from None
        except _Refused as refused:
            await self._refuse(send, refused)
        finally:
            self.disk.add(seen)

    async def _admit(self, ip: str | None, declared: int | None) -> None:
        if declared is not None:
            self._check_size(declared)
            if await self.disk.total() + declared > self.max_disk_bytes:
                # Measure again, and free what is old, before refusing.
                await asyncio.to_thread(self.disk.sweep, pressure=True)
                if await self.disk.total(fresh=True) + declared > self.max_disk_bytes:
                    raise self._full()
        try:
            hit = await self.service.check_budget("uploads", None, ip)
        except ChatRateLimited as exc:
            raise _Refused(429, str(exc), exc.retry_after) from None
        if declared:
            try:
                await self._charge_bytes(ip, declared)
            except _Refused:
                await self.service.forget_hit("uploads", hit)
                raise

    async def _charge_bytes(self, ip: str | None, size: int) -> None:
        try:
            await self.service.check_budget("upload_bytes", None, ip, size)
        except ChatRateLimited as exc:
            raise _Refused(429, str(exc), exc.retry_after) from None

    def _check_size(self, size: int) -> None:
        if size > self.max_request_bytes:
            limit = self.max_request_bytes / (1024 * 1024)
            raise _Refused(413, f"The upload is too large (over {limit:,.0f} MB). Send less.")

    def _full(self) -> _Refused:
        log.warning("upload dir over MAX_UPLOAD_DISK_MB: upload refused")
        return _Refused(
            507, "The server has no room for more uploads right now. Try again in a while."
        )

    async def _refuse(self, send: Callable, refused: _Refused) -> None:
        body = json.dumps({"error": refused.message}).encode()
        wait = [(b"retry-after", str(refused.retry_after).encode())] if refused.retry_after else []
        await send_json(send, refused.status, body, wait)


def _cause(exc: BaseException) -> _Refused | None:
    """Our refusal inside whatever the app wrapped it in (__cause__ / __context__ chain)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _Refused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
