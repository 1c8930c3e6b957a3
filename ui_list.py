"""The sidebar's conversation list as HTML: pinned first, then by date (Today, Yesterday,
Previous 7 days, Older), each with its menu (rename, pin, export, share, delete); or, while a
search is typed, the matches with the text they matched.

Plain functions of plain data (no gradio import). Every title and snippet is the user's or a
model's text: escaped here, always. The page's script (LIST_JS) turns a click on an element
with `data-action` into the list's click event with {action, id}; the server checks both.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ACTIONS = frozenset({"open", "rename", "pin", "unpin", "export", "share", "delete"})
MAX_LISTED = 200  # beyond these, search finds the older ones

GROUPS = (
    ("pinned", "📌 Pinned · 置顶"),
    ("today", "Today · 今天"),
    ("yesterday", "Yesterday · 昨天"),
    ("week", "Previous 7 days · 7 天内"),
    ("older", "Older · 更早"),
)

# Runs once when the list is first rendered (gr.HTML's js_on_load): one delegated listener,
# so the list can be redrawn without re-binding anything.
LIST_JS = """
if (!element.dataset.wired) {
  element.dataset.wired = "1";
  const closeMenus = (except) => element.querySelectorAll(".conv.menu-open").forEach(
    (item) => { if (item !== except) item.classList.remove("menu-open"); });
  element.addEventListener("click", (event) => {
    const el = event.target.closest("[data-action]");
    if (!el || !element.contains(el)) return;
    event.preventDefault();
    const item = el.closest("[data-id]");
    const action = el.dataset.action;
    if (action === "menu") {
      closeMenus(item);
      item.classList.toggle("menu-open");
      return;
    }
    closeMenus(null);
    trigger("click", {action: action, id: item ? item.dataset.id : ""});
    if (action === "rename") {
      setTimeout(() => document.querySelector("#chat-title input")?.focus(), 600);
    }
  });
  document.addEventListener("click", (event) => {
    if (!element.contains(event.target)) closeMenus(null);
  });
  element.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeMenus(null);
  });
}
"""


def day_group(updated: float, now: float, tz_minutes: int) -> str:
    """Which date group a conversation last changed in, in the reader's time zone."""
    offset = tz_minutes * 60
    days = int((now + offset) // 86400) - int((updated + offset) // 86400)
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    return "week" if days <= 7 else "older"


def grouped(
    items: Sequence[Mapping[str, Any]], now: float, tz_minutes: int
) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """(group, items) in display order, newest first inside each, empty groups left out."""
    groups: dict[str, list[Mapping[str, Any]]] = {name: [] for name, _ in GROUPS}
    for item in items[:MAX_LISTED]:
        if item.get("pinned") == "1":
            groups["pinned"].append(item)
        else:
            groups[day_group(_number(item.get("updated")), now, tz_minutes)].append(item)
    return [(name, groups[name]) for name, _ in GROUPS if groups[name]]


def render_list(
    items: Sequence[Mapping[str, Any]],
    selected: str | None,
    *,
    tz_minutes: int = 0,
    now: float | None = None,
) -> str:
    """The grouped list; `selected` is marked as the open chat."""
    if not items:
        return ""
    sections = []
    for name, members in grouped(items, time.time() if now is None else now, tz_minutes):
        label = dict(GROUPS)[name]
        rows = "".join(_item(item, selected, pinned=name == "pinned") for item in members)
        sections.append(
            f'<section class="conv-group" data-group="{name}">'
            f'<h3 class="conv-group-title">{label}</h3>{rows}</section>'
        )
    more = len(items) - MAX_LISTED
    if more > 0:
        sections.append(f'<p class="conv-more">{more} older · search to find them</p>')
    return "".join(sections)


def render_hits(hits: Iterable[Any], selected: str | None, query: str) -> str:
    """Search results: title, and the text that matched under it."""
    rows = [_item(_hit_item(hit), selected, snippet=hit.snippet) for hit in hits]
    if not rows:
        return f'<p class="conv-none">No chat matches “{html.escape(query)}” · 没有匹配的对话</p>'
    return f'<section class="conv-group" data-group="search">{"".join(rows)}</section>'


def _hit_item(hit: Any) -> dict[str, Any]:
    return {"id": hit.id, "title": hit.title, "updated": hit.updated}


def _item(
    item: Mapping[str, Any], selected: str | None, *, pinned: bool = False, snippet: str = ""
) -> str:
    cid = html.escape(str(item["id"]), quote=True)
    title = html.escape(str(item.get("title") or "New chat"))
    current = ' aria-current="true"' if item["id"] == selected else ""
    found = f'<span class="conv-snippet">{html.escape(snippet)}</span>' if snippet else ""
    pin = ("unpin", "Unpin · 取消置顶") if pinned else ("pin", "Pin · 置顶")
    menu = "".join(
        f'<button type="button" data-action="{action}">{label}</button>'
        for action, label in (
            ("rename", "Rename · 重命名"),
            pin,
            ("export", "Export · 导出"),
            ("share", "Share · 分享"),
            ("delete", "Delete · 删除"),
        )
    )
    return (
        f'<div class="conv" data-id="{cid}"{current}>'
        f'<button type="button" class="conv-open" data-action="open" title="{title}">'
        f'<span class="conv-title">{title}</span>{found}</button>'
        '<button type="button" class="conv-menu-button" data-action="menu" '
        'aria-label="Chat menu · 菜单" aria-haspopup="true">⋯</button>'
        f'<div class="conv-menu" role="menu">{menu}</div></div>'
    )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
