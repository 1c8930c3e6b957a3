"""gradio_tuning: Gradio's behaviour kept, its per-session and per-update waste gone.

Each test checks what a user or Gradio itself would see (outputs, session state, the deep
link's configs); the CPU saved is measured by bench/bench_load.py, not asserted here.
"""

from __future__ import annotations

import gradio as gr
import pytest
from gradio import state_holder

import gradio_tuning

gradio_tuning.apply()
SKIP = {"__type__": "update"}
pytestmark = pytest.mark.anyio


@pytest.fixture
def demo():
    with gr.Blocks() as blocks:
        chat = gr.Chatbot(label="chat")
        box = gr.Textbox(value="typed")
        cid = gr.State("")
        button = gr.Button("go")

        def step(text: str):
            return [{"role": "assistant", "content": text}], gr.skip(), "id"

        button.click(step, box, [chat, box, cid])
    blocks.get_config_file()  # what launch() does first: the default config exists
    blocks.parts = {"chat": chat, "box": box, "cid": cid}
    yield blocks


def original_session(blocks) -> state_holder.SessionState:
    """A session as Gradio builds it (the class gradio_tuning derives from)."""
    return state_holder.SessionState.__mro__[1](blocks)


@pytest.fixture
def fn(demo):
    return next(iter(demo.fns.values()))


def test_a_new_session_builds_no_block_config(demo):
    session = state_holder.SessionState(demo)
    assert session.lazy_config and session.config_values == {}


def test_the_deep_link_gets_every_config_with_the_latest_values(demo):
    lazy, eager = state_holder.SessionState(demo), original_session(demo)
    box = demo.parts["box"]
    for session in (lazy, eager):
        session._update_value_in_config(box._id, "changed")
    assert list(lazy.components) == list(eager.components)
    configs = {c["id"]: c for c in lazy.components}
    assert configs[box._id]["props"]["value"] == "changed"


async def test_skip_leaves_the_component_alone_and_says_so(demo, fn):
    session = state_holder.SessionState(demo)
    chat, box = demo.parts["chat"], demo.parts["box"]
    out = await demo.postprocess_data(fn, [[{"role": "user", "content": "hi"}], SKIP, "x"], session)
    assert out[1] == SKIP  # what Gradio sends for gr.skip(): the browser keeps the box
    assert out[0][0]["content"][0]["text"] == "hi"
    assert session.blocks_config.blocks[box._id] is box  # not rebuilt
    assert session.state_data[demo.parts["cid"]._id] == "x"
    # A real property update is still applied, and replaces the component in the session.
    out = await demo.postprocess_data(fn, [SKIP, gr.Textbox(lines=4), SKIP], session)
    assert out[0] == SKIP and out[1]["lines"] == 4
    assert session.blocks_config.blocks[box._id].lines == 4
    assert session.blocks_config.blocks[chat._id] is chat


async def test_a_single_skip_for_every_output_still_works(demo, fn):
    session = state_holder.SessionState(demo)
    out = await demo.postprocess_data(fn, gr.skip(), session)
    assert out[:2] == [SKIP, SKIP]


def test_apply_twice_changes_nothing():
    session_class, postprocess = state_holder.SessionState, gr.Blocks.postprocess_data
    gradio_tuning.apply()
    assert state_holder.SessionState is session_class
    assert gr.Blocks.postprocess_data is postprocess
