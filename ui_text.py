"""The UI's words in English and Chinese, picked by the browser's language (`gr.I18n`).

Labels in app.py are `i18n("key")`; `main()` passes `I18N` to `launch(i18n=...)`. The frontend
translates one key per string (a second marker in the same string is shown raw), so a
translated text that needs live data appended (the status panel) puts its key first.
A browser in any other language gets English.
"""

from __future__ import annotations

import gradio as gr
from gradio.i18n import I18nData

EN: dict[str, str] = {
    "conversations": "### Conversations",
    "search": "Search chats",
    "search_placeholder": "🔍 Search titles and messages",
    "pin": "📌 Pin",
    "unpin": "📌 Unpin",
    "share": "🔗 Share",
    "unshare": "Stop sharing",
    "share_link": "Read-only link to a snapshot of this chat",
    "undo_delete": "↶ Undo",
    "continue_left": "Continue with this answer",
    "continue_right": "Continue with this answer",
    "new_chat": "＋ New chat",
    "this_chat": "This chat",
    "title": "Title",
    "title_placeholder": "Rename this chat, then press Enter",
    "export": "⬇ Export",
    "downloads": "Downloads",
    "import": "Import JSON",
    "delete": "🗑 Delete",
    "role": "Role",
    "provider": "Provider",
    "model": "Model (👁 sees images)",
    "custom_prompt": "Custom system prompt",
    "custom_prompt_placeholder": "You are a…",
    "chat": "Chat",
    "chat_placeholder": "**Ask anything**, or drop images here to talk about them. "
    "Or start from an example:",
    "input_placeholder": "Message, or paste/drop images… (Enter sends, Shift+Enter: new line)",
    "stop": "■ Stop",
    "retry": "↻ Retry",
    "undo": "↶ Undo",
    "compare": "⇄ Compare",
    "settings": "Settings: sampling, your own API keys",
    "detail": "Image detail",
    "status_memory": "**History:** in memory: conversations are lost when the app restarts. "
    "Set `REDIS_URL` to keep them.  \n**Providers** (👁 = sees images):",
    "status_redis": "**History:** Redis (`REDIS_URL`).  \n**Providers** (👁 = sees images):",
}

ZH: dict[str, str] = {
    "conversations": "### 对话",
    "search": "搜索对话",
    "search_placeholder": "🔍 搜索标题和消息",
    "pin": "📌 置顶",
    "unpin": "📌 取消置顶",
    "share": "🔗 分享",
    "unshare": "停止分享",
    "share_link": "此对话快照的只读链接",
    "undo_delete": "↶ 撤销",
    "continue_left": "用这个回答继续",
    "continue_right": "用这个回答继续",
    "new_chat": "＋ 新对话",
    "this_chat": "当前对话",
    "title": "标题",
    "title_placeholder": "输入新标题，按回车保存",
    "export": "⬇ 导出",
    "downloads": "下载",
    "import": "导入 JSON",
    "delete": "🗑 删除",
    "role": "角色",
    "provider": "服务商",
    "model": "模型（👁 可识图）",
    "custom_prompt": "自定义系统提示词",
    "custom_prompt_placeholder": "你是一位……",
    "chat": "对话",
    "chat_placeholder": "**问点什么吧**，也可以拖入或粘贴图片。或者从示例开始：",
    "input_placeholder": "输入消息，或粘贴/拖入图片…（回车发送，Shift+回车换行）",
    "stop": "■ 停止",
    "retry": "↻ 重试",
    "undo": "↶ 撤销",
    "compare": "⇄ 对比",
    "settings": "设置：采样参数、自己的 API 密钥",
    "detail": "图片精度",
    "status_memory": "**历史记录：** 保存在内存中，应用重启后会丢失。"
    "设置 `REDIS_URL` 可长期保存。  \n**服务商**（👁 = 可识图）：",
    "status_redis": "**历史记录：** Redis（`REDIS_URL`）。  \n**服务商**（👁 = 可识图）：",
}

I18N = gr.I18n(en=EN, zh=ZH)


def i18n(key: str) -> I18nData:
    """A label the browser shows in its own language; unknown keys fail at import, not live."""
    if key not in EN:
        raise KeyError(f"no UI text {key!r} in ui_text.EN")
    return I18N(key)
