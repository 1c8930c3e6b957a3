"""A turn's images: uploads read, paid for (pixel budget) and prepared for the model; stored
references; local files of stored images for the Chatbot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from chat_budgets import ChatBudgets
from chat_errors import ChatError
from chat_types import Plan
from config import Settings
from history import HistoryStore
from images import ImageRejected, PreparedImage, prepare_images, receipt_text

Who = tuple[str | None, str | None]  # (browser id, client IP): who pays the pixel budget


class ChatImages:
    def __init__(
        self,
        settings: Settings,
        budgets: ChatBudgets,
        store: Callable[[], Awaitable[HistoryStore]],
        image_dir: Path,
    ) -> None:
        self.settings = settings
        self.budgets = budgets
        self._store = store
        self.image_dir = image_dir

    async def prepare_files(
        self, paths: Sequence[str], plan: Plan, who: Who
    ) -> list[PreparedImage]:
        """Uploaded files, read and prepared (see `prepare`)."""
        items = []
        for path in paths:
            name = Path(path).name
            try:
                items.append((name, await asyncio.to_thread(Path(path).read_bytes)))
            except OSError:
                raise ChatError(f'"{name}" could not be read. Attach it again.') from None
        return await self.prepare(items, plan, who)

    async def prepare(
        self, items: list[tuple[str, bytes]], plan: Plan, who: Who
    ) -> list[PreparedImage]:
        """(name, bytes) images validated and optimised for the model; ChatError if refused.
        `who` pays for the decoding in the image_pixels budget, before any is decoded."""
        if not items:
            return []
        if not plan.provider.supports_vision(plan.model):
            raise ChatError(
                f"{plan.model} cannot see images. Pick a vision model (👁 in the model list) or "
                "remove the images and send again."
            )
        await self.budgets.charge_pixels(items, *who)
        try:
            return await prepare_images(
                items,
                max_bytes=self.settings.max_image_bytes,
                provider_id=plan.provider.id,
                model=plan.model,
                detail=plan.detail,
            )
        except ImageRejected as exc:
            raise ChatError(str(exc)) from None

    async def prepare_imported(
        self, items: Sequence[tuple[str, str, bytes]], meta: dict, who: Who
    ) -> tuple[dict[str, PreparedImage], dict[str, str]]:
        """An import's (sha, name, bytes) images, each through the pipeline on its own:
        the prepared ones by their old sha, and why the others were left out."""
        prepared: dict[str, PreparedImage] = {}
        dropped: dict[str, str] = {}
        if not items:
            return prepared, dropped
        await self.budgets.charge_pixels([(name, raw) for _, name, raw in items], *who)
        results = await asyncio.gather(
            *(
                prepare_images(
                    [(name, raw)],
                    max_bytes=self.settings.max_image_bytes,
                    provider_id=meta.get("provider", ""),
                    model=meta.get("model", ""),
                )
                for _, name, raw in items
            ),
            return_exceptions=True,
        )
        for (sha, _, _), result in zip(items, results, strict=True):
            if isinstance(result, ImageRejected):
                dropped[sha] = result.reason
            elif isinstance(result, BaseException):
                raise result
            else:
                prepared[sha] = result[0]
        return prepared, dropped

    async def path(self, ref: dict) -> str | None:
        """A local file for a stored image, so the Chatbot can show it after a reload."""
        sha = ref.get("sha256", "") if isinstance(ref, dict) else ""
        if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef")):
            return None  # a tampered reference ("../..") must not name a file outside the store
        ext = {"image/png": "png", "image/gif": "gif", "image/webp": "webp"}.get(
            ref.get("mime", ""), "jpg"
        )
        path = self.image_dir / f"{sha}.{ext}"
        if path.exists():
            # Shown again: no longer "old" for the upload dir's cleanup (upload_limits.py, Gradio's
            # delete_cache go by age), which deletes it only when nobody displayed it lately.
            with contextlib.suppress(OSError):
                os.utime(path)
            return str(path)
        stored = await (await self._store()).get_image(sha)
        if stored is None:
            return None
        self.image_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        await asyncio.to_thread(tmp.write_bytes, stored[0])
        tmp.replace(path)
        return str(path)


def image_ref(image: PreparedImage) -> dict:
    """How a message refers to its stored image (the bytes are stored once, by sha256)."""
    return {
        "sha256": image.sha256,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "name": image.name,
        "original_bytes": image.original_bytes,
        "original_width": image.original_width,
        "original_height": image.original_height,
    }


def user_message(text: str, prepared: Sequence[PreparedImage], plan: Plan) -> dict:
    """A user's message as stored: its text, image references and what was sent of each."""
    message: dict = {
        "role": "user",
        "content": text,
        "images": [image_ref(image) for image in prepared],
        "created": time.time(),
    }
    if prepared:
        message["receipts"] = [
            receipt_text(image, plan.provider.id, plan.model, plan.detail) for image in prepared
        ]
    return message
