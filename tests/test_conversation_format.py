"""conversation_format (the export file's pydantic models) and conversation_import.parse_import."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

import conversation_format
from conversation_format import (
    MAX_DEPTH,
    MAX_MESSAGES,
    ExportFile,
    parse_export,
    schema_block,
    validate_export,
)
from conversation_import import parse_import

PNG = bytes.fromhex("89504e470d0a1a0a") + b"not really a png, but bytes"


def export(*messages: dict, **top: object) -> dict:
    return {"format": "chat-history", "version": 1, "meta": {"title": "T"}, **top,
            "messages": list(messages)}  # fmt: skip


def refusal(data: object) -> str:
    with pytest.raises(ValueError) as refused:
        validate_export(data)
    return str(refused.value)


def test_published_schema_is_the_models_schema():
    """docs/export-format.md shows ExportFile.model_json_schema(): refresh it with
    `python conversation_format.py` when the models change."""
    doc = conversation_format.SCHEMA_DOC.read_text(encoding="utf-8")
    begin, end = (
        doc.index(conversation_format.SCHEMA_BEGIN),
        doc.index(conversation_format.SCHEMA_END),
    )
    published = doc[begin : end + len(conversation_format.SCHEMA_END)]
    assert published == schema_block()
    body = published.split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    assert json.loads(body) == ExportFile.model_json_schema()
    assert json.loads(body)["properties"]["version"]["enum"] == [1, 2]


def test_an_export_round_trips_with_unknown_fields_kept():
    data = base64.b64encode(PNG).decode()
    user = {
        "role": "user",
        "content": "what is this?",
        "created": 1712345678,
        "images": [
            {
                "sha256": "0" * 64,
                "name": "cat.png",
                "mime": "image/png",
                "data": data,
                "width": 3,
                "height": 2,
            }
        ],  # fmt: skip
        "receipts": ["cat.png: sent as is"],
    }
    answer = {
        "role": "assistant",
        "content": [{"type": "text", "text": "A cat."}],
        "status": "complete",
        "usage": {"prompt_tokens": 10, "details": {"cached": 2}},
        "annotations": [{"content": "A dog?"}],  # a field this version does not name
    }
    meta = {"title": "Cats", "id": "x", "browser": "y", "updated": "1", "bytes": "9",
            "created": "1712345678.5", "temperature": "0.7"}  # fmt: skip
    meta_out, messages, blobs = parse_export(export(user, answer, meta=meta, extra="ignored"))

    sha = hashlib.sha256(PNG).hexdigest()
    assert blobs == {sha: (PNG, "image/png")}
    ref = {"sha256": sha, "name": "cat.png", "mime": "image/png", "width": 3, "height": 2}
    assert messages == [{**user, "images": [ref]}, answer]
    assert type(messages[0]["created"]) is int  # values come back as they were given
    assert meta_out == {"title": "Cats", "role": "", "provider": "", "model": "",
                        "created": "1712345678.5", "temperature": "0.7"}  # fmt: skip


def test_format_and_version_are_checked():
    assert validate_export({"messages": []}).version == 2  # both may be left out
    assert validate_export({"messages": [], "version": 1}).version == 1  # older files read
    for top in ({"version": 3}, {"version": "1"}, {"version": True}, {"format": "other"}):
        assert refusal({"messages": [], **top}) == (
            "unsupported format or version: this app reads 'chat-history' versions 1 and 2"
        )


def test_versions_branches_and_feedback_round_trip_with_their_images():
    image = {"sha256": "0" * 64, "name": "x.png"}
    branch = {"role": "assistant", "content": "old answer", "feedback": "down"}
    version = {"role": "user", "content": "first", "images": [image], "after": [branch]}
    message = {"role": "user", "content": "edited", "versions": [version, None], "version": 1}
    meta, messages, _ = parse_export(export(message))
    kept = messages[0]
    assert kept["version"] == 1 and kept["versions"][1] is None
    assert kept["versions"][0]["after"] == [branch]
    assert kept["versions"][0]["images"] == [image]
    assert refusal(export({"role": "assistant", "feedback": "meh"}))
    assert refusal(export({"role": "user", "versions": [{"role": "user", "after": "x"}]}))


def test_too_many_messages_are_refused_before_they_are_read():
    assert validate_export(export(*[{"role": "user"}] * MAX_MESSAGES))
    too_many = export(*[{"role": "user"}] * (MAX_MESSAGES + 1))
    assert refusal(too_many) == "too many messages (10,001; at most 10,000)"


def test_nesting_is_bounded():
    def nested(levels: int) -> object:
        value: object = []
        for _ in range(levels):
            value = [value]
        return value

    # export (1) > messages (2) > message (3) > field (4...): the field may nest to the bound
    assert validate_export(export({"role": "user", "x": nested(MAX_DEPTH - 4)}))
    deep = export({"role": "user", "x": nested(MAX_DEPTH - 3)})
    assert refusal(deep) == f"nested too deeply (more than {MAX_DEPTH} levels)"
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_import("[" * 100_000 + "]" * 100_000, max_messages=9, max_chars=9, max_images=9)


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ({"mime": "image/png", "data": "!!!!"}, "an image's 'data' is not valid base64"),
        ({"mime": "image/png", "data": "abc"}, "an image's 'data' is not valid base64"),
        ({"mime": "text/html", "data": "AAAA"}, "an image's 'mime' must be image/*"),
        ({"data": "AAAA"}, "an image's 'mime' must be image/*"),
        ({"sha256": "F" * 64}, "an image without 'data' needs its 'sha256' (image hash)"),
        ({"sha256": "0" * 64, "width": "3"}, "'width': input should be a valid integer"),
    ],
)
def test_bad_images_are_refused_saying_where(image, says):
    data = export({"role": "user"}, {"role": "user", "images": [{"sha256": "0" * 64}, image]})
    assert refusal(data) == f"message 1, image 1: {says}"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "expected a JSON object (a conversation export)"),
        ({"meta": {}}, "'messages' must be a list"),
        (export({"role": ""}), "message 0: 'role': string should have at least 1 character"),
        (export({"role": "user", "content": {"a": 1}}),
         "message 0: 'content' must be a string or a list of parts"),
        (export({"role": "user", "content": [{"text": "no type"}]}),
         "message 0, part 0: 'type': field required"),
        (export({"role": "user", "usage": "many"}),
         "message 0: 'usage': input should be a valid dictionary"),
        (export(meta={"title": ["x"]}), "meta field 'title' must be a string, not a list"),
        (export(meta={"no spaces": "x"}), "meta field 'no spaces' cannot be set"),
    ],
)  # fmt: skip
def test_other_refusals_are_one_clear_sentence(data, says):
    assert refusal(data) == says


def test_parse_import_bounds_to_the_settings():
    long = {"role": "user", "content": "u" * 50, "images": [{"sha256": "1" * 64}] * 3}
    answer = {"role": "assistant", "content": "a" * 50}
    meta = {"title": "t" * 999, **{f"f{i}": "v" * 999 for i in range(99)}}
    text = json.dumps(export({"role": "user", "content": "dropped"}, long, answer, meta=meta))
    parsed = parse_import(text, max_messages=2, max_chars=20, max_images=2)
    first, second = parsed.messages
    assert first["content"].startswith("u" * 20 + "\n\n[content cut on import")
    assert "[1 image(s) left out on import: at most 2 per message]" in first["content"]
    assert len(first["images"]) == 2
    assert second == answer  # answers may be 5x longer
    assert len(parsed.meta) == 32 and len(parsed.meta["title"]) == 200
    assert max(len(v) for v in parsed.meta.values()) == 500
    assert parsed.image_items() == []  # references without bytes: nothing to prepare


def test_parse_import_says_when_text_is_not_json():
    with pytest.raises(ValueError, match="that file is not JSON"):
        parse_import("{not json", max_messages=9, max_chars=9, max_images=9)
