"""Gradio runtime tuning: costs Gradio 6.31 pays per session or per event that this app
does not need. Each was measured (bench/bench_load.py, py-spy) before it was changed here;
`apply()` runs once, before the Blocks are built, and is idempotent.

Everything here is either an environment default or a narrow, checked replacement of one
Gradio internal: when Gradio's internals are not what was measured (another version), the
replacement is skipped with a log line and Gradio's own code runs unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("app")


def apply() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event,
    # even with monitoring off: 1.3 ms per event at first, 6 ms once the 10,000 are there.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**62))
    _skip_missing_matplotlib()
    _lazy_session_config()
    _cheap_skips()


def _skip_missing_matplotlib() -> None:
    """Every event runs `import matplotlib` twice (to switch its backend around the call).
    Without matplotlib installed each attempt searches sys.path again (~60 µs, 2% of the
    CPU of a streamed turn). Marking it absent makes the failure immediate."""
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # "import" now fails fast


def _lazy_session_config() -> None:
    """Gradio builds every block's config (its JSON schemas included) into each new session
    up front, and rebuilds a block's config whenever a value or property of it changes: ~10 ms
    of CPU and ~150 KB per session for this page's 88 blocks, and ~0.3 ms per block touched
    by an event, all for a copy only Gradio's deep links read. Here a session builds those
    configs when a deep link asks for them, with the latest values."""
    from gradio import state_holder

    base = state_holder.SessionState
    if getattr(base, "lazy_config", False):
        return  # applied already
    if not (
        isinstance(base.__dict__.get("components"), property)
        and callable(base.__dict__.get("_update_value_in_config"))
        and callable(base.__dict__.get("_update_config"))
    ):
        log.info("gradio_tuning: SessionState differs from the one measured; left as it is")
        return

    class _NoBlocks:
        """Looks like the Blocks to SessionState.__init__ but lists no block, so nothing
        is configured eagerly; everything else __init__ sets up stays Gradio's."""

        def __init__(self, blocks: Any) -> None:
            self.default_config = blocks.default_config
            self.blocks: dict = {}

    class LazySessionState(base):  # type: ignore[misc, valid-type]
        lazy_config = True

        def __init__(self, blocks: Any) -> None:
            super().__init__(_NoBlocks(blocks))
            self._config_ids = [k for k in self.blocks_config.blocks if k in blocks.blocks]
            self._latest_values: dict[int, Any] = {}

        def _update_value_in_config(self, key: int, value: Any) -> None:
            if key in self.config_values:
                super()._update_value_in_config(key, value)
            else:
                self._latest_values[key] = value

        def _update_config(self, key: int) -> None:
            # The block was replaced (a property update): its config is built again on demand.
            config = self.config_values.pop(key, None) or {}
            if "value" in config.get("props", {}):
                self._latest_values.setdefault(key, config["props"]["value"])

        @property
        def components(self) -> Iterator[dict]:
            # The deep link (the only reader of every block's config) gets them all.
            for key in self._config_ids:
                if key not in self.config_values:
                    block = self.blocks_config.blocks[key]
                    self.config_values[key] = self.blocks_config.config_for_block(key, [], block)
                if key in self._latest_values:
                    super()._update_value_in_config(key, self._latest_values.pop(key))
            yield from base.components.fget(self)

    state_holder.SessionState = LazySessionState


def _cheap_skips() -> None:
    """`gr.skip()` for one output of several (leave it as it is) makes Gradio rebuild that
    component and its config as if it had changed: 3.7 ms for a Chatbot or a
    MultimodalTextbox, on every streamed update that leaves the input box alone. The output
    is the same `{"__type__": "update"}` either way; this returns it without the rebuild."""
    from gradio import blocks, components

    original = blocks.Blocks.postprocess_data
    if getattr(original, "cheap_skips", False):
        return
    finished = getattr(components._Keywords, "FINISHED_ITERATING", None)
    if finished is None:
        log.info("gradio_tuning: Blocks.postprocess_data differs from the one measured")
        return

    async def postprocess_data(self: Any, block_fn: Any, predictions: Any, state: Any) -> list:
        outputs = block_fn.outputs
        skipped: list[int] = []
        if _is_skip(predictions) and len(outputs) > 1:
            predictions = [dict(SKIP) for _ in outputs]
        if isinstance(predictions, list | tuple) and len(predictions) == len(outputs) > 1:
            predictions = list(predictions)
            for i, block in enumerate(outputs):
                if _is_skip(predictions[i]) and not getattr(block, "stateful", False):
                    predictions[i] = finished  # Gradio leaves such an output alone (None)
                    skipped.append(i)
        output = await original(self, block_fn, predictions, state)
        for i in skipped:
            output[i] = dict(SKIP)
        return output

    postprocess_data.cheap_skips = True  # type: ignore[attr-defined]
    blocks.Blocks.postprocess_data = postprocess_data


SKIP = {"__type__": "update"}  # what gr.skip() returns


def _is_skip(value: object) -> bool:
    return isinstance(value, dict) and value == SKIP
