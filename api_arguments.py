"""A clear refusal for a file argument that is not a list of uploaded files.

Gradio validates a gr.File input against its data model before any handler runs, and answers
junk there (images=5, a bare path string) with "the app raised an exception" and a traceback
in the log. `FileArgumentCheck` looks at that one argument in the request body first (as one
of http_guards.BodySizeLimit's checks, on the body it has already read and checked) and
answers junk the way Gradio answers its own validators: a 422 that gradio_client raises as
"1 parameter(s) failed validation: - images: ...".
"""

from __future__ import annotations

import json

FILE_DATA = "gradio.FileData"
QUEUE_JOIN = "/gradio_api/queue/join"


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


class FileArgumentCheck:
    """Refuses a call of `api_name` (by name, or by its function index on the queue) whose
    argument at `position` is not a list of uploaded files, with `message`."""

    def __init__(
        self, *, api_name: str, fn_index: int, position: int, parameter: str, message: str
    ) -> None:
        self.fn_index, self.position = fn_index, position
        self.named_paths = {
            f"/gradio_api/{kind}/{api_name}{tail}" for kind in ("call", "run") for tail in ("", "/")
        }
        detail = {
            "__type__": "validate",
            "is_valid": False,
            "parameter_name": parameter,
            "message": message,
        }
        self.refusal = (422, json.dumps({"detail": [detail]}).encode())

    def __call__(self, path: str, body: bytes) -> tuple[int, bytes] | None:
        if path not in self.named_paths and path != QUEUE_JOIN:
            return None
        try:
            payload = json.loads(body)
        except ValueError:
            return None  # Gradio answers a malformed body itself (422)
        if not isinstance(payload, dict):
            return None
        if path == QUEUE_JOIN and payload.get("fn_index") != self.fn_index:
            return None
        data = payload.get("data")
        if not isinstance(data, list) or len(data) <= self.position:
            return None  # Gradio refuses a wrong argument count itself
        return None if is_file_list(data[self.position]) else self.refusal
