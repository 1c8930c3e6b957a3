"""Plain HTTP routes beside the Gradio app (seed-compatible API, health). Filled in by issue 9."""

from __future__ import annotations

from starlette.routing import BaseRoute

from chat import ChatService


def routes(service: ChatService) -> list[BaseRoute]:
    return []
