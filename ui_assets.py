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
#conversations:not(:has(label)) { display: none; }
#conversations .wrap { flex-direction: column; gap: 4px; }
#conversations label { width: 100%; }
#conversations label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
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
    if (narrow() && event.target.closest('#conversations label, #new-chat')) {
      setTimeout(close, 150);
    }
  });
}
"""
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
