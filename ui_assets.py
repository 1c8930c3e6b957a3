"""What the page looks like and does in the browser: CSS, the phone-screen script, the
chat's examples and formula delimiters. Plain data: ui.py passes them to Gradio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# localStorage keys of this app's BrowserStates (the browser id, keys, saved prompts).
STORAGE_KEY = "mmchat-browser"
LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
CSS = """
#actions { align-items: center; gap: 8px; }
#status { font-size: 0.85em; opacity: 0.85; }
/* Images in the chat are previews (a click opens them full screen), not a wall of pixels. */
#chatbot .image-frame img { max-height: 180px; width: auto; max-width: 100%; object-fit: contain; }
/* The conversation list: one title per line, and no empty box before the first chat. */
.conv-group { display: flex; flex-direction: column; gap: 2px; margin-bottom: 10px; }
.conv-group-title { font-size: 0.75em; font-weight: 600; opacity: 0.65; margin: 4px 6px; }
.conv { position: relative; display: flex; align-items: center; border-radius: 8px; }
.conv:hover, .conv[aria-current] { background: var(--background-fill-secondary); }
.conv[aria-current] { outline: 1px solid var(--border-color-accent); }
.conv-open { flex: 1; min-width: 0; text-align: left; padding: 6px 8px; background: none;
  border: 0; cursor: pointer; color: inherit; display: flex; flex-direction: column;
  font-size: 0.9rem; font-weight: 400; line-height: 1.3; }
.conv-title, .conv-snippet { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.conv-snippet { font-size: 0.78em; opacity: 0.7; }
.conv-menu-button { background: none; border: 0; cursor: pointer; padding: 4px 8px;
  color: inherit; opacity: 0.6; border-radius: 6px; font-size: 1.1em; }
.conv-menu-button:hover, .conv.menu-open .conv-menu-button { opacity: 1;
  background: var(--background-fill-primary); }
.conv-menu { display: none; position: absolute; right: 4px; top: 100%; z-index: 20;
  flex-direction: column; min-width: 150px; padding: 4px; border-radius: 8px;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  box-shadow: var(--shadow-drop-lg); }
.conv.menu-open .conv-menu { display: flex; }
.conv-menu button { text-align: left; padding: 6px 10px; border: 0; background: none;
  cursor: pointer; color: inherit; border-radius: 6px; }
.conv-menu button:hover { background: var(--background-fill-secondary); }
.conv-menu button[data-action=delete] { color: var(--error-text-color, #c00); }
.conv-more, .conv-none { font-size: 0.8em; opacity: 0.7; margin: 6px; }
#chat-tools { align-items: center; gap: 6px; flex-wrap: wrap; }
#usage-total { font-size: 0.85em; opacity: 0.85; min-height: 0; }
#compare-panel { gap: 12px; }
/* Who wrote an answer, when, and its usage: one line (the bubble widens for it); a phone
   wraps it rather than scroll the page sideways. */
@media (min-width: 768px) { #chatbot .thought-group .title p { white-space: nowrap; } }
#chatbot a[href^="#mmchat-"] { text-decoration: none; padding: 0 6px; font-weight: 600; }
@media (max-width: 767px) {
  #chatbot { min-height: 52vh !important; }
  #chatbot .image-frame img { max-height: 140px; }
  #actions { flex-wrap: wrap; }
}
"""
# Phones: the sidebar would cover the whole chat, so it starts closed there, and picking a
# conversation (or New chat) closes it again. Runs once on page load (launch(js=...)).
NARROW_SCREEN_JS = """
() => {
  const narrow = () => window.innerWidth < 768;
  // True once it clicked: the sidebar gets its "open" class a moment after it mounts.
  const close = () => {
    const bar = document.querySelector('#sidebar');
    if (!bar || !bar.classList.contains('open')) return false;
    bar.querySelector('.toggle-button')?.click();
    return true;
  };
  if (narrow()) {
    let tries = 0;
    const timer = setInterval(() => { if (close() || ++tries > 100) clearInterval(timer); }, 50);
  }
  document.addEventListener('click', (event) => {
    if (narrow() && event.target.closest('#conversations [data-action=open], #new-chat')) {
      setTimeout(close, 150);
    }
  });
}
"""
# The chat's own links (chat_view): a version arrow (‹ 2/3 ›) or "Load earlier". An empty
# gr.HTML runs this once (js_on_load) and turns such a click into its click event with the
# link's name. Capture phase: before the Chatbot would open the link.
CHAT_LINKS_JS = """
if (!window.mmchatLinks) {
  window.mmchatLinks = true;
  document.addEventListener('click', (event) => {
    const link = event.target.closest('a[href^="#mmchat-"]');
    if (!link || !link.closest('#chatbot')) return;
    event.preventDefault();
    event.stopPropagation();
    trigger('click', {link: link.getAttribute('href').slice(1)});
  }, true);
}
"""
# What the page runs once when it loads (launch(js=...)).
PAGE_JS = NARROW_SCREEN_JS
# The reader's time zone, minutes east of UTC (the list's Today / Yesterday are theirs).
TIME_ZONE_JS = "() => -new Date().getTimezoneOffset()"

# Shown in the empty chat; a click puts the example into the input box (Enter sends it).
EXAMPLES: list[Any] = [
    {
        "text": "What is in this picture? Describe its colours and mood.",
        "files": [str(EXAMPLES_DIR / "sunset.jpg")],
        "display_text": "🖼️ What is in this picture?",
    },
    {"text": "用简单的话解释什么是量子纠缠，再举一个生活中的类比。"},
    {
        "text": "Write a Python function that checks whether a string is a palindrome, "
        "ignoring case and punctuation, with a few tests.",
        "display_text": "💻 Python: a palindrome check, with tests",
    },
    {"text": "Solve step by step: $x^2 - 5x + 6 = 0$", "display_text": "➗ Solve x² − 5x + 6 = 0"},
]

# The page's address names the open conversation (`?c=<id>`), so a reload, a bookmark or a
# second tab of this browser opens it. Runs in the browser whenever the browser state changes,
# once the page's load event has read the address (before it, the state restored from
# localStorage would overwrite the link being opened).
CONVERSATION_URL_JS = """
(state) => {
  if (!window.mmchatLoaded) return [];
  const cid = (state && state.conversation_id) || "";
  const url = new URL(window.location.href);
  if (cid) url.searchParams.set("c", cid); else url.searchParams.delete("c");
  if (url.href !== window.location.href) window.history.replaceState(null, "", url);
  return [];
}
"""
# The last step of the page's load: the address may follow the conversation from now on; the
# input box gets the focus.
PAGE_LOADED_JS = (
    "(state) => { window.mmchatLoaded = true; (" + CONVERSATION_URL_JS.strip() + ")(state);"
    " document.querySelector('#chat-input textarea')?.focus(); return []; }"
)
