"""Search a browser's conversations by title and message text, on plain Redis (no module).

Redis here has no RediSearch, so the matching runs in the app: a per-process cache keeps each
conversation's searchable text (NFKC-normalised, casefolded), validated by the conversation's
`updated` (meta field; the index zset's score is set with it in every write's MULTI). A
search reads the index with every title and `updated` in one command (SORT_RO BY nosort
GET; a pipeline of HMGET where the server refuses that), titles always (a rename does not
bump `updated`), and then, per chunk of conversations, newest first, the messages of those
whose `updated` changed since they were cached (one pipeline of LRANGE); it stops at `limit`
hits. Every replica stays correct: the validator is read from Redis on each search.

The cache keeps folded text only (half the memory of folded + original); the snippet of a hit
is cut from the original message, read again with one LINDEX per hit. Plain data and async
Redis reads; no gradio import. docs/history.md ("Search") has the why and the figures.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from redis.exceptions import RedisClusterException, ResponseError

from history_records import LRU
from redis_connection import as_text

MAX_QUERY_CHARS = 200  # what a search box needs; a longer query is cut, not refused
MAX_TERMS = 16
MAX_LIMIT = 200
SNIPPET_CHARS = 80
DEFAULT_SEARCH_CACHE_BYTES = 64 * 1024 * 1024  # ~1,500 conversations of 50 mixed messages
CHUNK = 32  # conversations per pipeline: bounds the event loop's stall while filling (cold)
MAX_DEPTH = 8  # versions nest branches (conversation_tree.py); stored JSON is not trusted
SEPARATOR = "\n"  # between texts: a term never holds whitespace, so it never spans two
ELLIPSIS = "…"

log = logging.getLogger("history")
_SPACE_RE = re.compile(r"\s+")
KeyOf = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One conversation that matches; `snippet` is "" when the title alone matched."""

    id: str
    title: str
    updated: float
    snippet: str
    where: Literal["title", "message"]


@dataclass(frozen=True, slots=True)
class Searchable:
    """A conversation's folded text: every text joined by SEPARATOR; `starts[i]` is where
    text i begins, `refs[i]` its (message index, ordinal in `texts_of(message)`)."""

    stamp: str  # the meta's `updated` when the text was read
    text: str
    starts: tuple[int, ...]
    refs: tuple[tuple[int, int], ...]
    size: int


# ---- text ------------------------------------------------------------------------------------


# Full-width punctuation is in most Chinese text, and NFKC changes it: replacing these few
# first (str.replace is fast C) leaves most texts already normalised, which the quick check
# sees at once. fold() equals NFKC + casefold either way (tests/test_search.py checks it);
# it is ~5x faster than NFKC on every Chinese message when the cache fills.
_COMMON_COMPAT = [(c, unicodedata.normalize("NFKC", c)) for c in "，？！：；（）\u3000…～"]


def fold(text: str) -> str:
    """The form both sides are compared in: NFKC (full-width Ａ, ligatures) then casefold
    (ß = ss). ASCII, most of the text, takes the fast path."""
    if text.isascii():
        return text.lower()
    for compat, plain in _COMMON_COMPAT:
        if compat in text:
            text = text.replace(compat, plain)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return text.casefold()


def query_terms(query: Any) -> list[str]:
    """The query's folded terms, once each, in order: whitespace-separated, bounded."""
    if not isinstance(query, str):
        return []
    terms = fold(query[:MAX_QUERY_CHARS]).split()
    return list(dict.fromkeys(terms))[:MAX_TERMS]


def texts_of(message: Any, depth: int = 0) -> Iterator[str]:
    """A stored message's searchable texts: its `content`, then each version's (and the
    messages of that version's branch, `after`). Non-str contents and None slots are skipped."""
    if not isinstance(message, dict) or depth > MAX_DEPTH:
        return
    content = message.get("content")
    if isinstance(content, str) and content:
        yield content
    versions = message.get("versions")
    for version in versions if isinstance(versions, list) else ():
        if not isinstance(version, dict):
            continue
        text = version.get("content")
        if isinstance(text, str) and text and text != content:
            yield text
        after = version.get("after")
        for follower in after if isinstance(after, list) else ():
            yield from texts_of(follower, depth + 1)


def decode_messages(raw: list[bytes | str]) -> list[Any]:
    """LRANGE's items as JSON; one parse for the whole list, item by item if one is bad."""
    if not raw:
        return []
    try:
        return json.loads(b"[" + b",".join(_as_bytes(item) for item in raw) + b"]")
    except ValueError:
        decoded: list[Any] = []
        for item in raw:
            try:
                decoded.append(json.loads(item))
            except ValueError:
                decoded.append(None)
        return decoded


def _as_bytes(item: bytes | str) -> bytes:
    return item if isinstance(item, bytes) else item.encode()


def searchable(stamp: str, messages: list[Any]) -> Searchable:
    """The cache entry of a conversation read at `stamp` (its meta's `updated`)."""
    parts: list[str] = []
    starts: list[int] = []
    refs: list[tuple[int, int]] = []
    at = 0
    for index, message in enumerate(messages):
        for ordinal, text in enumerate(texts_of(message)):
            folded = fold(text)
            parts.append(folded)
            starts.append(at)
            refs.append((index, ordinal))
            at += len(folded) + len(SEPARATOR)
    joined = SEPARATOR.join(parts)
    size = sys.getsizeof(joined) + 80 * len(starts) + 200  # text, the two tuples, the entry
    return Searchable(stamp, joined, tuple(starts), tuple(refs), size)


def snippet(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> str:
    """~width characters of `text` around text[start:end], whitespace collapsed, with an
    ellipsis at each end that was cut. The context is shared evenly, the rest to the side
    that has more."""
    found = _SPACE_RE.sub(" ", text[start:end])
    room = max(width - len(found), 0)
    left = _SPACE_RE.sub(" ", text[max(0, start - width) : start])
    right = _SPACE_RE.sub(" ", text[end : end + width])
    keep_left = min(len(left), max(room // 2, room - len(right)))
    keep_right = min(len(right), room - keep_left)
    cut_left = start > width or keep_left < len(left)
    cut_right = end + width < len(text) or keep_right < len(right)
    body = (left[len(left) - keep_left :] + found + right[:keep_right]).strip()
    return (ELLIPSIS if cut_left else "") + body + (ELLIPSIS if cut_right else "")


def original_span(original: str, folded_start: int, folded_end: int) -> tuple[int, int]:
    """Where a match in fold(original) lies in `original`. Equal lengths (ASCII, CJK, most
    text) map one to one; otherwise by bisection on the folded length of each prefix (ß ->
    ss makes it grow), a few C-speed folds even for a long message."""
    if len(fold(original)) == len(original):
        return folded_start, folded_end

    def prefix_reaching(length: int) -> int:
        """The shortest prefix of `original` whose folded form has `length` characters."""
        low, high = 0, len(original)
        while low < high:
            middle = (low + high) // 2
            if len(fold(original[:middle])) < length:
                low = middle + 1
            else:
                high = middle
        return low

    start = max(prefix_reaching(folded_start + 1) - 1, 0)
    return start, max(prefix_reaching(folded_end), start + 1)


# ---- matching --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    where: Literal["title", "message"]
    term: str = ""
    position: int = -1  # in the cached folded text


def match(title: str, entry: Searchable | None, terms: list[str]) -> Match | None:
    """Every term in the title or the messages. "title" when the title alone has them all;
    else the first term (query order) found in the messages, at its first position."""
    in_title = [term in title for term in terms]
    if all(in_title):
        return Match("title")
    text = entry.text if entry is not None else ""
    first: Match | None = None
    for term, titled in zip(terms, in_title, strict=True):
        if titled and first is not None:
            continue  # present already; only an earlier-term snippet would need it
        position = text.find(term)
        if position < 0:
            if titled:
                continue
            return None
        if first is None:
            first = Match("message", term, position)
    return first


def located(entry: Searchable, position: int) -> tuple[int, int, int]:
    """(index of the text, its message index, its ordinal) at a position of entry.text."""
    index = bisect_right(entry.starts, position) - 1
    message_index, ordinal = entry.refs[index]
    return index, message_index, ordinal


def hit_snippet(entry: Searchable, found: Match, original: Any) -> str:
    """The snippet around `found`, cut from the original text when the message read again
    still holds the term (it may have changed since it was cached), else from the folded."""
    index, _, ordinal = located(entry, found.position)
    for number, text in enumerate(texts_of(original)):
        if number == ordinal:
            again = fold(text).find(found.term)
            if again >= 0:
                begin, stop = original_span(text, again, again + len(found.term))
                return snippet(text, begin, stop)
            break
    start = entry.starts[index]
    end = entry.starts[index + 1] - len(SEPARATOR) if index + 1 < len(entry.starts) else None
    offset = found.position - start
    return snippet(entry.text[start:end], offset, offset + len(found.term))


# ---- the search ------------------------------------------------------------------------------


class ConversationSearch:
    """The cache and the reads of `HistoryStore.search_conversations` (one per store). Redis
    errors propagate: the store's Guard turns them into HistoryUnavailable."""

    def __init__(
        self,
        reader: Any,
        *,
        meta_key: KeyOf,
        msgs_key: KeyOf,
        index_key: KeyOf,
        cache_bytes: int = DEFAULT_SEARCH_CACHE_BYTES,
    ) -> None:
        self._r = reader
        self._meta_key = meta_key
        self._msgs_key = msgs_key
        self._index_key = index_key
        self.cache = LRU(cache_bytes, weigh=lambda entry: entry.size)
        # SORT_RO ... GET reads the index and every title in one reply; a server that refuses
        # it (Redis < 7, an ACL without read access to every key, a cluster) gets a pipeline.
        self.one_command = meta_key("*").count("*") == 1

    async def search(self, browser_id: str, query: str, *, limit: int = 50) -> list[SearchHit]:
        terms = query_terms(query)
        limit = min(limit, MAX_LIMIT)
        if not terms or limit <= 0:
            return []
        listing = await self._listing(browser_id)
        found: list[tuple[SearchHit, Searchable, Match]] = []
        for at in range(0, len(listing), CHUNK):
            chunk = listing[at : at + CHUNK]
            for (cid, title, stamp), entry in zip(chunk, await self._texts(chunk), strict=True):
                got = match(fold(title), entry, terms)
                if got is not None:
                    found.append(
                        (SearchHit(cid, title, _seconds(stamp), "", got.where), entry, got)
                    )
                    if len(found) >= limit:
                        return await self._snippets(found)
        return await self._snippets(found)

    async def warm(self, browser_id: str) -> int:
        """Read into the cache what a search of this browser would read (the page does it
        when the search box gets the focus, so the first keystroke finds it warm); how many
        conversations are cached."""
        listing = await self._listing(browser_id)
        for at in range(0, len(listing), CHUNK):
            await self._texts(listing[at : at + CHUNK])
        return len(listing)

    async def _listing(self, browser_id: str) -> list[tuple[str, str, str]]:
        """(id, title, updated) of this browser's conversations, newest first. Those whose
        meta is gone (expired) or names another browser are left out (list_conversations
        drops them from the index). `updated` is the cache's validator: it changes in the
        MULTI of every write of messages, with the index score."""
        fields = ("title", "browser", "updated")
        rows: list[Any] = []
        index = self._index_key(browser_id)
        if self.one_command:
            pattern = self._meta_key("*")
            try:
                flat = await self._r.sort_ro(
                    index, by="nosort", desc=True, get=["#", *(f"{pattern}->{f}" for f in fields)]
                )
                rows = [flat[i : i + 4] for i in range(0, len(flat), 4)]
            except (ResponseError, RedisClusterException) as err:
                log.info("search: SORT_RO refused (%s); reading titles in a pipeline", err)
                self.one_command = False
        if not self.one_command:
            cids = await self._r.zrevrange(index, 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for cid in cids:
                pipe.hmget(self._meta_key(as_text(cid)), *fields)
            rows = [[cid, *values] for cid, values in zip(cids, await pipe.execute(), strict=True)]
        return [
            (as_text(cid), as_text(title or b""), as_text(stamp or b""))
            for cid, title, owner, stamp in rows
            if owner is not None and as_text(owner) == browser_id
        ]

    async def _texts(self, chunk: list[tuple[str, str, str]]) -> list[Searchable]:
        """The cached text of each, read again (one pipeline of LRANGE) where it changed."""
        entries = [self.cache.get(cid) for cid, _, _ in chunk]
        stale = [
            i
            for i, (row, entry) in enumerate(zip(chunk, entries, strict=True))
            if entry is None or not row[2] or entry.stamp != row[2]  # no stamp: no cache
        ]
        if stale:
            pipe = self._r.pipeline(transaction=False)
            for i in stale:
                pipe.lrange(self._msgs_key(chunk[i][0]), 0, -1)
            for i, raw in zip(stale, await pipe.execute(), strict=True):
                entries[i] = searchable(chunk[i][2], decode_messages(raw))
                self.cache.put(chunk[i][0], entries[i])
        return entries  # every None is filled now

    async def _snippets(self, found: list[tuple[SearchHit, Searchable, Match]]) -> list[SearchHit]:
        """Message hits get their snippet from the original message: one LINDEX each, in one
        pipeline (the cache keeps folded text only)."""
        hits = [hit for hit, _, _ in found]
        wanted = [(i, entry, got) for i, (_, entry, got) in enumerate(found) if got.term]
        if not wanted:
            return hits
        pipe = self._r.pipeline(transaction=False)
        for i, entry, got in wanted:
            _, message_index, _ = located(entry, got.position)
            pipe.lindex(self._msgs_key(hits[i].id), message_index)
        for (i, entry, got), raw in zip(wanted, await pipe.execute(), strict=True):
            message = decode_messages([raw])[0] if raw is not None else None
            hits[i] = replace(hits[i], snippet=hit_snippet(entry, got, message))
        return hits


def _seconds(stamp: str) -> float:
    try:
        return float(stamp)
    except ValueError:
        return 0.0
