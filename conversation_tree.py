"""Versions and branches of a conversation, kept inline in its stored messages (plain data).

The store's list is the path on screen: what is shown and what the model sees next. A message
with more than one version carries them all, oldest first, in `versions`, and the one shown in
`version`; the shown one's slot is None (it is the message itself). Every other version keeps
the messages that followed it in `after`, so a version is a branch: switching to it puts its
own continuation back on the path and files the current one under the version left.

    {"role": "assistant", "content": "B", "version": 1,
     "versions": [{"role": "assistant", "content": "A", "after": []}, None]}

Retry and Compare add a version to the last answer; editing a user message adds a version to
that message (its branch starts empty and gets the new answer). A slot keeps at most
MAX_VERSIONS (the oldest go first): a public app must bound what one message may grow to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Message = dict[str, Any]

MAX_VERSIONS = 20
TREE_FIELDS = ("versions", "version", "after")


def bare(message: Message) -> Message:
    """The message without its versions (what one version is)."""
    return {k: v for k, v in message.items() if k not in TREE_FIELDS}


def version_count(message: Mapping[str, Any]) -> int:
    versions = message.get("versions")
    return len(versions) if isinstance(versions, list) and versions else 1


def shown_version(message: Mapping[str, Any]) -> int:
    """The 0-based index of the version on the path."""
    index = message.get("version")
    count = version_count(message)
    return index if isinstance(index, int) and 0 <= index < count else count - 1


def versions_of(message: Message) -> list[Message]:
    """Every version, oldest first, the shown one included; without their branches."""
    versions = message.get("versions")
    if not isinstance(versions, list) or not versions:
        return [bare(message)]
    shown = shown_version(message)
    return [
        bare(message) if i == shown or not isinstance(v, dict) else bare(v)
        for i, v in enumerate(versions)
    ]


def _slots(message: Message) -> list[Message | None]:
    versions = message.get("versions")
    if isinstance(versions, list) and versions:
        return list(versions)
    return [None]


def add_version(current: Message, following: Sequence[Message], new: Message) -> Message:
    """`new` as the newest version of the slot `current` holds (and shows); `current` keeps
    `following` (what came after it) as its branch."""
    slots = _slots(current)
    slots[shown_version(current)] = {**bare(current), "after": list(following)}
    slots.append(None)
    del slots[: max(0, len(slots) - MAX_VERSIONS)]
    return (
        {**bare(new), "versions": slots, "version": len(slots) - 1} if len(slots) > 1 else bare(new)
    )


def replace_version(current: Message, new: Message) -> Message:
    """`new` in the place of the version shown (a failed answer is not worth keeping)."""
    if version_count(current) == 1:
        return bare(new)
    return {**bare(new), "versions": _slots(current), "version": shown_version(current)}


def switch(current: Message, following: Sequence[Message], target: int) -> list[Message]:
    """The path from this slot on once version `target` is shown: that version, then its own
    branch; the version left keeps `following`. ValueError for a version that is not there."""
    slots = _slots(current)
    if (
        not 0 <= target < len(slots)
        or not isinstance(slots[target], dict)
        and (target != shown_version(current))
    ):
        raise ValueError("That version does not exist.")
    shown = shown_version(current)
    if target == shown:
        return [current, *following]
    chosen: Message = slots[target]  # type: ignore[assignment]  # checked above
    slots[shown] = {**bare(current), "after": list(following)}
    slots[target] = None
    after = chosen.get("after")
    branch = [m for m in after if isinstance(m, dict)] if isinstance(after, list) else []
    return [{**bare(chosen), "versions": slots, "version": target}, *branch]


def public_path(messages: Sequence[Message]) -> list[Message]:
    """The path as the API shows it: a message with more than one version gets `versions`
    (every version, oldest first, without their branches) and `version` (the shown one)."""
    out = []
    for message in messages:
        if version_count(message) > 1:
            out.append(
                {
                    **bare(message),
                    "versions": versions_of(message),
                    "version": shown_version(message),
                }
            )
        else:
            out.append(bare(message))
    return out


def walk(messages: Sequence[Any]) -> Iterator[Message]:
    """Every message of a conversation, those in other versions and branches included
    (for images to keep, export, search)."""
    for message in messages:
        if not isinstance(message, dict):
            continue
        yield message
        versions = message.get("versions")
        for version in versions if isinstance(versions, list) else ():
            if isinstance(version, dict):
                yield version
                after = version.get("after")
                yield from walk(after if isinstance(after, list) else ())
