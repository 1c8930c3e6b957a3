"""Export files for download: written where only their owner can find them, and short-lived.

Gradio serves any file in its cache folder to whoever asks for its path, so an export's path
is the only thing that protects it. Each export goes in a folder named by 128 random bits
(the path reaches only the browser that asked for it), is removed after `ttl_s`, and all of a
conversation's exports are removed when the conversation is deleted.

Nothing here imports gradio: app.py calls it.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from pathlib import Path

EXPORT_TTL_S = 15 * 60  # long enough to click "download", short enough not to linger
_UNSAFE_NAME = re.compile(r"[^\w\- ]+")
_OWNER_FILE = ".owner"


def file_stem(title: str, cid: str) -> str:
    """A download name after the conversation's title ("Trip to Xi'an" -> "Trip to Xi an"),
    or `chat-<id>` when the title has no usable characters."""
    cleaned = " ".join(_UNSAFE_NAME.sub(" ", title or "").split())[:60].strip()
    return cleaned or f"chat-{cid[:8]}"


class ExportFiles:
    """Writes, expires and deletes the export files of conversations under `root`."""

    def __init__(self, root: Path, ttl_s: float = EXPORT_TTL_S) -> None:
        self.root = root
        self.ttl_s = ttl_s

    def write(self, cid: str, title: str, markdown: str, data: dict | None) -> list[str]:
        """Markdown and JSON files of one conversation; blocking (run it in a worker thread:
        an export with images is megabytes to encode and write)."""
        self.sweep()
        folder = self.root / secrets.token_hex(16)
        folder.mkdir(parents=True, mode=0o700)
        (folder / _OWNER_FILE).write_text(cid, encoding="ascii")
        stem = file_stem(title, cid)
        files = [folder / f"{stem}.md", folder / f"{stem}.json"]
        files[0].write_text(markdown, encoding="utf-8")
        files[1].write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return [str(path) for path in files]

    def forget(self, cid: str) -> int:
        """Remove every export of a conversation (it was deleted); the number removed."""
        removed = 0
        for folder in self._folders():
            if _owner(folder) == cid:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def sweep(self, now: float | None = None) -> int:
        """Remove exports older than the TTL (by the folder's age, so this also works after a
        restart); the number removed."""
        limit = (time.time() if now is None else now) - self.ttl_s
        removed = 0
        for folder in self._folders():
            try:
                old = folder.stat().st_mtime < limit
            except OSError:
                continue
            if old:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def _folders(self) -> list[Path]:
        try:
            return [path for path in self.root.iterdir() if path.is_dir()]
        except OSError:
            return []


def _owner(folder: Path) -> str:
    try:
        return (folder / _OWNER_FILE).read_text(encoding="ascii").strip()
    except OSError:
        return ""
