"""Versions and branches as plain data (conversation_tree), and how the chat shows them
(chat_view: the arrows, who wrote an answer, the thumbs per answer group)."""

from __future__ import annotations

import pytest

import conversation_tree as tree
from chat_view import (
    answer_at,
    authorship,
    clock,
    feedback_values,
    navigator,
    render_indexed,
    without_navigator,
)


def msg(role: str, content: str, **fields) -> dict:
    return {"role": role, "content": content, **fields}


def test_add_version_keeps_the_old_one_with_what_followed_it():
    old, after = msg("user", "one"), [msg("assistant", "Echo: one"), msg("user", "two")]
    new = tree.add_version(old, after, msg("user", "uno"))
    assert new["content"] == "uno" and new["version"] == 1
    assert new["versions"] == [{**old, "after": after}, None]
    assert tree.versions_of(new) == [old, msg("user", "uno")]
    third = tree.add_version(new, [], msg("user", "eins"))
    assert tree.version_count(third) == 3 and tree.shown_version(third) == 2
    assert third["versions"][1] == {"role": "user", "content": "uno", "after": []}


def test_switch_swaps_the_branches_both_ways():
    after = [msg("assistant", "A"), msg("user", "more"), msg("assistant", "B")]
    edited = tree.add_version(msg("user", "q"), after, msg("user", "q2"))
    path = tree.switch(edited, [msg("assistant", "A2")], 0)
    assert [m["content"] for m in path] == ["q", "A", "more", "B"]
    assert path[0]["version"] == 0 and path[0]["versions"][1]["after"] == [msg("assistant", "A2")]
    back = tree.switch(path[0], path[1:], 1)
    assert [m["content"] for m in back] == ["q2", "A2"]
    assert tree.switch(back[0], back[1:], 1) == back, "the version shown: nothing changes"
    with pytest.raises(ValueError):
        tree.switch(back[0], back[1:], 5)
    with pytest.raises(ValueError):
        tree.switch(msg("user", "single"), [], 1)


def test_bounded_replace_and_walk():
    message = msg("assistant", "v0")
    for number in range(1, tree.MAX_VERSIONS + 5):
        message = tree.add_version(message, [], msg("assistant", f"v{number}"))
    assert tree.version_count(message) == tree.MAX_VERSIONS
    assert tree.versions_of(message)[-1]["content"] == f"v{tree.MAX_VERSIONS + 4}"
    replaced = tree.replace_version(message, msg("assistant", "fixed"))
    assert tree.version_count(replaced) == tree.MAX_VERSIONS
    assert replaced["content"] == "fixed" and replaced["version"] == message["version"]
    nested = tree.add_version(msg("user", "a"), [message], msg("user", "b"))
    walked = {m["content"] for m in tree.walk([nested])}
    assert walked >= {"a", "b", "v10", "v23"} and "v0" not in walked, "the oldest went"


def test_public_path_shows_every_version_without_branches():
    edited = tree.add_version(msg("user", "q"), [msg("assistant", "A")], msg("user", "q2"))
    public = tree.public_path([edited, msg("assistant", "A2")])
    assert public[0]["versions"] == [msg("user", "q"), msg("user", "q2")]
    assert public[0]["version"] == 1 and "after" not in str(public)
    assert "versions" not in public[1]


def test_the_arrows_are_links_only_where_there_is_a_version_to_go_to():
    message = tree.add_version(msg("assistant", "A"), [], msg("assistant", "B"))
    assert navigator(3, message) == "[‹](#mmchat-version-3-0) 2 / 2 ›"
    first = tree.switch(message, [], 0)[0]
    assert navigator(3, first) == "‹ 1 / 2 [›](#mmchat-version-3-1)"
    assert navigator(3, msg("assistant", "only")) == ""
    for shown in (navigator(3, message), navigator(3, first)):
        assert without_navigator(f"my text\n\n{shown}") == "my text"
    assert without_navigator("a 1 / 2 b") == "a 1 / 2 b", "only the row the page added"


def test_who_wrote_an_answer_and_when():
    names = {"openai": "OpenAI"}
    answer = msg("assistant", "x", provider="openai", model="gpt-4o", created=0.0)
    assert authorship(answer, names) == "gpt-4o · OpenAI"
    answer["created"] = 1_700_000_000.0
    assert authorship(answer, names) == f"gpt-4o · OpenAI · {clock(1_700_000_000.0)}"
    assert clock(1_700_000_000.0, now=1_700_000_100.0) == "22:13 UTC"
    assert clock(1_700_000_000.0, now=1_700_200_000.0) == "Nov 14 22:13 UTC"
    assert authorship(msg("assistant", "x"), names) == ""


def test_thumbs_follow_the_answer_groups_and_likes_find_their_answer():
    messages = [
        msg("user", "q", receipts=["cat.png: sent"]),
        msg("assistant", "a", feedback="up", usage={"prompt_tokens": 1}),
        msg("user", "q2"),
        msg("assistant", "b", feedback="down"),
        msg("user", "q3"),
        msg("assistant", "c"),
    ]
    shown, positions = render_indexed(messages, {}, 40)
    assert feedback_values(messages, shown, positions) == ["Like", "Dislike", None]
    first_group = positions.index(0) + 1  # the receipt starts the first answer's group
    assert answer_at(messages, shown, positions, first_group) == 1
    assert answer_at(messages, shown, positions, positions.index(3)) == 3
    assert answer_at(messages, shown, positions, positions.index(2)) == -1, "a user message"
    assert answer_at(messages, shown, positions, 99) == -1
