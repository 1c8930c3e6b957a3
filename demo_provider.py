"""The offline demo provider: a plainly labelled reply built from the input (the text echoed,
each image's size, format and main colours), streamed like a real answer, so the whole app
works without any key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import re
from collections import Counter
from collections.abc import AsyncGenerator, Mapping

from provider_presets import ContentDelta, Finished, ReasoningDelta, StreamEvent

log = logging.getLogger("providers")

# --------------------------------------------------------------------------------------
# The offline demo provider

_DEMO_SAMPLE = """

Here is a sample so you can see how answers render:

| Item | Value |
|---|---|
| **bold** | `inline code` |
| formula | $E = mc^2$ |

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$
"""
_SAMPLE_TRIGGER = re.compile(r"\b(markdown|code|latex|math|formula|table)\b|代码|公式|表格", re.I)
_THINK_TRIGGER = re.compile(r"\b(think|thinking|reason|reasoning)\b|思考|推理", re.I)


async def demo_events(messages: list[dict], delay_s: float) -> AsyncGenerator[StreamEvent, None]:
    text, images = _last_user_message(messages)
    if _THINK_TRIGGER.search(text):
        thought = "The user asked me to think. In demo mode there is no model, so I only echo."
        for piece in _pieces(thought):
            yield ReasoningDelta(piece)
            await asyncio.sleep(delay_s)
    # describe_image can take a few ms per image: keep the event loop free.
    reply = await asyncio.to_thread(demo_reply, messages, text, images)
    for piece in _pieces(reply):
        yield ContentDelta(piece)
        await asyncio.sleep(delay_s)  # also a cancellation point, so Stop works
    yield Finished("stop")


def _pieces(text: str) -> list[str]:
    # Word by word; CJK text has no spaces, so long runs are cut every few characters.
    return re.findall(r"\s*\S{1,6}|\s+", text)


def _last_user_message(messages: list[dict]) -> tuple[str, list[str]]:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _parts(message.get("content"))
    return "", []


def _parts(content: object) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            images.append(str(url or ""))
    return "\n".join(texts), images


def demo_reply(messages: list[dict], text: str, images: list[str]) -> str:
    """The demo's answer: a plainly labelled echo of the input."""
    lines = [
        "**Demo mode** — offline replies, no AI model is called. To chat with a real model, "
        "set e.g. `OPENAI_API_KEY` or `DEEPSEEK_API_KEY` (see README).",
        "",
    ]
    said = " ".join(text.split())
    if len(said) > 300:
        said = said[:299] + "…"
    lines.append(f"You said: “{said}”." if said else "You sent no text.")
    role = _system_first_line(messages)
    if role:
        lines.append(f"Role: {role}")
    for number, url in enumerate(images, 1):
        lines.append(f"- Image {number}: {describe_data_url(url)}")
    reply = "\n".join(lines)
    if _SAMPLE_TRIGGER.search(text):
        reply += _DEMO_SAMPLE
    return reply


def _system_first_line(messages: list[dict]) -> str:
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "system":
            text, _ = _parts(message.get("content"))
            first = text.strip().splitlines()[0] if text.strip() else ""
            return first if len(first) <= 120 else first[:119] + "…"
    return ""


def describe_data_url(url: str) -> str:
    """'800×600 JPEG, mostly blue and white' for a data URL; never raises."""
    match = re.match(r"data:([^;,]*)(;base64)?,(.*)", url, re.S)
    if not match:
        return "a link (not downloaded in demo mode)"
    try:
        raw = base64.b64decode(match.group(3), validate=False)
        info = _describe_bytes(raw)
    except (binascii.Error, ValueError, OSError):
        return "could not be read"
    except Exception:  # images.py or Pillow failing on a strange file must not break the demo
        log.debug("demo: image description failed", exc_info=True)
        return "could not be read"
    described = f"{info.get('width')}×{info.get('height')} {info.get('format') or 'image'}"
    named = _colour_names(info.get("colours"))[:2]
    return f"{described}, mostly {' and '.join(named)}" if named else described


def _describe_bytes(raw: bytes) -> dict:
    try:
        import images  # lazy: the image pipeline loads only once the demo sees an image

        describe = images.describe_image
    except (ImportError, AttributeError):
        describe = _describe_with_pillow
    return describe(raw)


_PALETTE = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 220),
    "blue": (30, 70, 220),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
}


def _describe_with_pillow(raw: bytes) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        width, height, fmt, mode = img.width, img.height, img.format, img.mode
        small = img.convert("RGB").resize((24, 24))
        data = small.tobytes()
    pixels = [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data) - 2, 3)]
    counts = Counter(_nearest_colour(p) for p in pixels)
    colours = [name for name, n in counts.most_common(2) if n >= len(pixels) * 0.15]
    return {"width": width, "height": height, "format": fmt, "mode": mode, "colours": colours}


def _colour_names(colours: object) -> list[str]:
    """Names for whatever shape images.describe_image uses: names, (r, g, b) or "#rrggbb"."""
    if isinstance(colours, str) or (
        isinstance(colours, tuple)
        and len(colours) == 3
        and all(isinstance(v, int) for v in colours)
    ):
        colours = [colours]
    names: list[str] = []
    for colour in colours if isinstance(colours, list | tuple) else ():
        if isinstance(colour, list | tuple) and len(colour) >= 3:
            names.append(_nearest_colour((int(colour[0]), int(colour[1]), int(colour[2]))))
        elif isinstance(colour, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
            names.append(_nearest_colour((red, green, blue)))
        elif isinstance(colour, str) and colour:
            names.append(colour)
    return names


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    return min(
        _PALETTE,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, _PALETTE[name], strict=True)),
    )
