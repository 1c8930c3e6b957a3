"""api_arguments.FileArgumentCheck, as http_guards.BodySizeLimit runs it: /chat's `images`
argument is a list of uploaded files or the call is refused before Gradio's generic error, in
Gradio's own validator format (which gradio_client raises as "1 parameter(s) failed
validation: - images: ...")."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api_arguments import FileArgumentCheck, is_file_list
from http_guards import BodySizeLimit

pytestmark = pytest.mark.anyio
FILE = {"path": "/tmp/gradio/abc/photo.png", "meta": {"_type": "gradio.FileData"}}
CHAT_INDEX = 7


async def echo(request: Request) -> JSONResponse:
    """What reached the app: the body as it was sent."""
    return JSONResponse({"received": json.loads(await request.body())})


def client() -> httpx.AsyncClient:
    routes = [
        Route(path, echo, methods=["POST"])
        for path in ("/gradio_api/queue/join", "/gradio_api/call/chat", "/gradio_api/run/chat")
    ]
    check = FileArgumentCheck(
        api_name="chat",
        fn_index=CHAT_INDEX,
        position=1,
        parameter="images",
        message="images must be a list of uploaded image files",
    )
    app = Starlette(routes=routes, middleware=[Middleware(BodySizeLimit, checks=[check])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


@pytest.mark.parametrize("value", [None, [], [FILE], [FILE, FILE]])
def test_file_lists(value):
    assert is_file_list(value)


@pytest.mark.parametrize(
    "value",
    [5, "photo.png", ["photo.png"], {}, [{"path": "x"}], [{"path": 1, "meta": FILE["meta"]}]],
)
def test_junk_is_not_a_file_list(value):
    assert not is_file_list(value)


@pytest.mark.parametrize("path", ["/gradio_api/call/chat", "/gradio_api/run/chat"])
async def test_junk_images_are_refused_in_gradios_validator_format(path):
    async with client() as http:
        refused = await http.post(path, json={"data": ["hi", 5]})
    assert refused.status_code == 422
    (detail,) = refused.json()["detail"]
    assert detail == {
        "__type__": "validate",
        "is_valid": False,
        "parameter_name": "images",
        "message": "images must be a list of uploaded image files",
    }


async def test_the_queue_is_checked_for_chats_function_index_only():
    async with client() as http:
        chat = {"data": ["hi", ["a path"]], "fn_index": CHAT_INDEX, "session_hash": "s"}
        assert (await http.post("/gradio_api/queue/join", json=chat)).status_code == 422
        other = {**chat, "fn_index": CHAT_INDEX + 1}  # another event: not ours to judge
        passed = await http.post("/gradio_api/queue/join", json=other)
        assert passed.status_code == 200 and passed.json()["received"] == other


async def test_good_and_unparseable_bodies_reach_the_app_unchanged():
    async with client() as http:
        good = {"data": ["hi", [FILE], "assistant"]}
        passed = await http.post("/gradio_api/call/chat", json=good)
        assert passed.status_code == 200 and passed.json()["received"] == good
        # Too few arguments, or not an object: Gradio's own answer, not ours.
        short = {"data": ["hi"]}
        assert (await http.post("/gradio_api/call/chat", json=short)).json()["received"] == short
