"""The controls around the chat: the role / provider / model row with the custom prompt, and
the settings panel (sampling, your own keys, the provider check). Layout only: ui.py wires."""

from __future__ import annotations

from typing import Any

import gradio as gr

import ui_options
from config import DEFAULT_ROLE, Settings
from ui_text import i18n


def model_row(providers: Any) -> dict[str, Any]:
    default = providers.get(providers.default_id)
    with gr.Row(equal_height=True):
        parts: dict[str, Any] = {
            "role": gr.Dropdown(
                ui_options.role_choices(), value=DEFAULT_ROLE, label=i18n("role"), elem_id="role"
            ),
            "provider": gr.Dropdown(
                ui_options.provider_choices(providers),
                value=providers.default_id,
                label=i18n("provider"),
                elem_id="provider",
            ),
            "model": gr.Dropdown(
                ui_options.model_choices(providers, providers.default_id),
                value=default.default_model,
                label=i18n("model"),
                elem_id="model",
                allow_custom_value=True,
            ),
        }
    with gr.Group(visible=False) as parts["custom_group"]:
        parts["custom_prompt"] = gr.Textbox(
            label=i18n("custom_prompt"),
            lines=2,
            elem_id="custom-prompt",
            placeholder=i18n("custom_prompt_placeholder"),
        )
        with gr.Row(equal_height=True):
            parts["saved_prompt"] = gr.Dropdown(
                [], label="Saved prompts · 已保存", elem_id="saved-prompts", scale=2
            )
            parts["prompt_name"] = gr.Textbox(
                label="Save as · 保存为", placeholder="Name", elem_id="prompt-name", scale=2
            )
            parts["save_prompt_btn"] = gr.Button("Save · 保存", elem_id="save-prompt", scale=1)
    return parts


def settings_panel(settings: Settings, providers: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    with gr.Accordion(i18n("settings"), open=False, elem_id="settings"):
        with gr.Row():
            parts["temperature"] = gr.Slider(
                0, 2, value=0.7, step=0.1, label="Temperature · 温度", elem_id="temperature"
            )
            parts["top_p"] = gr.Slider(
                0.05, 1, value=1.0, step=0.05, label="Top-p", elem_id="top-p"
            )
            parts["max_tokens"] = gr.Number(
                value=0,
                minimum=0,
                maximum=settings.max_output_tokens,  # MAX_OUTPUT_TOKENS; the server clamps too
                step=256,
                precision=0,
                label="Max tokens (0 = model default)",
                elem_id="max-tokens",
            )
        gr.Markdown(
            "**Your own API keys · 自己的密钥**: they enable that provider for you only and "
            "are never stored on the server or logged. By default they are kept for this tab "
            "only. *Remember on this device* keeps them in this browser's storage, where "
            "anyone using this browser profile (or a browser extension) can read them."
        )
        with gr.Row():
            parts["key_boxes"] = [
                gr.Textbox(
                    label=f"{p.name} ({p.key_env})",
                    type="password",
                    elem_id=f"key-{p.id}",
                    placeholder="sk-…",
                    min_width=220,
                )
                for p in ui_options.byok_providers(providers)
            ]
        with gr.Row():
            parts["remember_keys"] = gr.Checkbox(
                value=False,
                label="Remember on this device · 在此设备上记住",
                elem_id="remember-keys",
                min_width=220,
            )
            parts["save_keys_btn"] = gr.Button("Use my keys · 使用", elem_id="save-keys", size="sm")
            parts["forget_keys_btn"] = gr.Button(
                "Forget my keys · 清除", elem_id="forget-keys", size="sm"
            )
            parts["check_btn"] = gr.Button(
                "Check providers · 检查", elem_id="check-providers", size="sm"
            )
        parts["check_result"] = gr.Markdown(elem_id="check-result")
    return parts
