"""A clear refusal for a file argument that is not a list of uploaded files.

Gradio validates a gr.File input against its data model before any handler runs, and answers
junk there (images=5, a bare path string) with "the app raised an exception" and a traceback
in the log. This ASGI middleware checks that one argument in the request body first and
answers junk the way Gradio answers its own validators (a 422 that gradio_client raises as
"1 parameter(s) failed validation: - images: ...").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from http_guards import send_json

FILE_DATA = "gradio.FileData"


def is_file_list(value: object) -> bool:
    """None, [] or a list of FileData payloads (what gradio_client sends for handle_file)."""
    if value is None:
        return True
    if not isinstance(value, list):
        return False
    return all(
        isinstance(item, dict)
        and isinstance(item.get("path"), str)
        and isinstance(item.get("meta"), dict)
        and item["meta"].get("_type") == FILE_DATA
        for item in value
    )


class ApiArgumentCheck:
    """Refuses a call of `api_name` (by name, or by its function index on the queue) whose
    argument at `position` is not a list of uploaded files, with `message`."""

    def __init__(
        self,
        app: Any,
        *,
        api_name: str,
        fn_index: int,
        position: int,
        parameter: str,
        message: str,
    ) -> None:
        self.app = app
        self.fn_index, self.position = fn_index, position
        self.parameter, self.message = parameter, message
        self.named_paths = {
            f"/gradio_api/{kind}/{api_name}{tail}" for kind in ("call", "run") for tail in ("", "/")
        }

    def _applies(self, scope: dict) -> bool:
        path = scope.get("path", "")
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and (path in self.named_paths or path == "/gradio_api/queue/join")
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:  # bounded: BodySizeLimit, outside this, caps API bodies
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body was in
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self._refused(scope.get("path", ""), body):
            detail = [
                {
                    "__type__": "validate",
                    "is_valid": False,
                    "parameter_name": self.parameter,
                    "message": self.message,
                }
            ]
            await send_json(send, 422, json.dumps({"detail": detail}).encode())
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refused(self, path: str, body: bytes) -> bool:
        try:
            payload = json.loads(body)
        except ValueError:
            return False  # Gradio answers a malformed body itself (422)
        if not isinstance(payload, dict):
            return False
        if path == "/gradio_api/queue/join" and payload.get("fn_index") != self.fn_index:
            return False
        data = payload.get("data")
        if not isinstance(data, list) or len(data) <= self.position:
            return False  # Gradio refuses a wrong argument count itself
        return not is_file_list(data[self.position])
