"""The sidebar list's HTML (ui_list): date groups in the reader's time zone, pins, the menu,
search hits, and every title and snippet escaped."""

from __future__ import annotations

import re

import ui_list
from history_search import SearchHit

NOW = 1_796_000_000.0  # a fixed "now" (UTC)
DAY = 86400


def item(cid: str, title: str, age_days: float, **meta) -> dict:
    return {"id": cid * 32, "title": title, "updated": str(NOW - age_days * DAY), **meta}


def groups(html: str) -> list[tuple[str, list[str]]]:
    found = []
    for name, body in re.findall(r'data-group="(\w+)">(.*?)</section>', html):
        found.append((name, re.findall(r'<span class="conv-title">(.*?)</span>', body)))
    return found


def test_groups_by_date_with_pins_first():
    items = [
        item("a", "now", 0),
        item("b", "pinned old", 40, pinned="1"),
        item("c", "yesterday", 1),
        item("d", "last week", 5),
        item("e", "long ago", 30),
    ]
    html = ui_list.render_list(items, "c" * 32, now=NOW)
    assert groups(html) == [
        ("pinned", ["pinned old"]),
        ("today", ["now"]),
        ("yesterday", ["yesterday"]),
        ("week", ["last week"]),
        ("older", ["long ago"]),
    ]
    assert html.count("aria-current") == 1 and 'data-id="' + "c" * 32 + '" aria-current' in html
    assert 'data-action="unpin"' in html and html.count('data-action="pin"') == 4


def test_today_is_the_readers_day():
    # 23:30 UTC yesterday is "today" for a reader at UTC+8 once it is past midnight there.
    now = 1_796_083_200.0 + 3600  # 01:00 UTC on a day boundary + 1 h
    late = {"id": "f" * 32, "title": "late", "updated": str(now - 2 * 3600)}
    assert ui_list.day_group(float(late["updated"]), now, 0) == "yesterday"
    assert ui_list.day_group(float(late["updated"]), now, 8 * 60) == "today"


def test_titles_and_snippets_are_escaped():
    evil = '<img src=x onerror="alert(1)">'
    html = ui_list.render_list([item("a", evil, 0)], None, now=NOW)
    assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    hit = SearchHit(id="a" * 32, title=evil, updated=NOW, snippet=evil, where="message")
    found = ui_list.render_hits([hit], None, "<b>q")
    assert "<img" not in found and found.count("&lt;img") == 3  # title, its tooltip, snippet
    assert "<b>q" not in ui_list.render_hits([], None, "<b>q")


def test_a_long_list_is_cut_and_says_how_to_find_the_rest():
    items = [item(f"{n % 10}", f"chat {n}", n / 100) for n in range(ui_list.MAX_LISTED + 7)]
    html = ui_list.render_list(items, None, now=NOW)
    assert html.count('class="conv"') == ui_list.MAX_LISTED
    assert "7 older · search to find them" in html
    assert ui_list.render_list([], None) == ""


def test_every_menu_action_is_one_the_server_accepts():
    html = ui_list.render_list([item("a", "x", 0)], None, now=NOW)
    actions = set(re.findall(r'data-action="(\w+)"', html)) - {"menu"}
    assert actions <= ui_list.ACTIONS and {"open", "rename", "share", "delete"} <= actions
