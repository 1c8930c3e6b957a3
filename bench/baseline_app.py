"""The plain alternative: a `gr.ChatInterface` streaming from an OpenAI-compatible server,
written the way Gradio's own guide shows it, with every Gradio default left alone.

    OPENAI_BASE_URL=http://127.0.0.1:8999/v1 OPENAI_API_KEY=x python bench/baseline_app.py

`bench/bench_load.py` runs the same load against this and against `app.py`. The defaults it
keeps (on purpose: they are what users get) include `default_concurrency_limit=1` per event,
`max_threads=40`, a sync generator that yields the whole answer on every token, and history
held in the session, and the server `pip install gradio` gives: uvicorn on asyncio's own event
loop and h11 (uvloop and httptools, which this app's requirements add, are hidden from it).
"""

from __future__ import annotations

import os
import sys

# As after `pip install gradio` alone: uvicorn falls back to asyncio and h11 without these.
sys.modules["uvloop"] = None  # type: ignore[assignment]
sys.modules["httptools"] = None  # type: ignore[assignment]

import gradio as gr  # noqa: E402
from openai import OpenAI  # noqa: E402

client = OpenAI()  # reads OPENAI_API_KEY and OPENAI_BASE_URL
MODEL = os.environ.get("BASELINE_MODEL", "gpt-4o-mini")


def predict(message: str, history: list[dict]):
    """The guide's example: the history as OpenAI messages, then yield the answer so far."""
    messages = [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": message})
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    chunks = []
    for chunk in stream:
        if chunk.choices:
            chunks.append(chunk.choices[0].delta.content or "")
            yield "".join(chunks)


demo = gr.ChatInterface(predict, title="Baseline chat")

if __name__ == "__main__":
    demo.launch()
