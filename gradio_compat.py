"""Every use of Gradio beyond its documented API, in one place.

Tested on the Gradio versions in `TESTED`; on another version each use still runs, and a
WARNING names what to check. Nothing here replaces or wraps Gradio code.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr

log = logging.getLogger("app")
TESTED = ("6.31.0",)


def configure_environment() -> None:
    """Settings Gradio reads from the environment, set before any Blocks exist."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event,
    # even with monitoring off: 1.3 ms per event at first, 6 ms once the 10,000 are there.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    if gr.__version__ not in TESTED:
        log.warning(
            "Gradio %s is not one this app was tested on (%s): check gradio_compat.py's "
            "uses (the /chat argument check, the unknown-endpoint answer).",
            gr.__version__,
            ", ".join(TESTED),
        )


def unknown_endpoint_errors() -> tuple[type[BaseException], ...]:
    """What Gradio's routes raise for an API name or function index that does not exist
    (not part of its public API: gradio.route_utils.FnIndexInferError, and a KeyError)."""
    try:
        from gradio.route_utils import FnIndexInferError
    except ImportError:  # renamed or gone: the 404 answer falls back to Gradio's own 500
        log.warning("gradio_compat: gradio.route_utils.FnIndexInferError is gone")
        return (KeyError,)
    return (FnIndexInferError, KeyError)


def api_event(demo: gr.Blocks, api_name: str) -> int:
    """The function index of the event named `api_name`, from the page config Gradio sends
    to browsers (`Blocks.config`'s "dependencies")."""
    config: Any = demo.config or {}
    for dependency in config.get("dependencies", []):
        if dependency.get("api_name") == api_name:
            return int(dependency["id"])
    raise LookupError(f"no event named {api_name!r} in the Blocks")
