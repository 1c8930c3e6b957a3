"""How large an image may be for a model, and how many input tokens it costs.

The model's facts (model_facts.py) name its image family, its token rule and what "auto" detail
means for it; this module holds the size caps per family and detail, and the token formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_facts import DETAILS, TokenRule, facts_for

# Sanity cap on any side we send, whatever the profile says (decoders and APIs choke beyond).
ABSOLUTE_MAX_SIDE = 8192


@dataclass(frozen=True)
class ImageProfile:
    """How many pixels (and bytes) one image may have for a provider/model/detail.

    The output is scaled by the smallest of: long side, short side and total-pixel caps
    (never up). Caps are symmetric, so orientation does not change the result.
    """

    family: str  # e.g. "openai-tile", "qwen", "generic" (shown in notes and tests)
    detail: str  # the effective detail ("auto" may be mapped, e.g. SiliconFlow auto = high)
    max_long_side: int
    max_short_side: int
    max_pixels: int
    max_bytes: int  # per encoded image, the provider's limit with a margin
    vision: bool = True  # the model's facts say it reads images (<P>_VISION_MODELS may add)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size to send for a width x height image (same aspect ratio, never larger)."""
        long_side, short_side = max(width, height), min(width, height)
        scale = min(
            1.0,
            self.max_long_side / long_side,
            self.max_short_side / short_side,
            math.sqrt(self.max_pixels / (width * height)),
        )
        if scale >= 1.0:
            return width, height
        # floor, so that the result never exceeds a cap; at least 1 px
        return max(1, int(width * scale)), max(1, int(height * scale))


_MB = 1024 * 1024
# OpenAI "high": fit 2048x2048, then short side 768. Larger images only cost upload time.
_OPENAI_HIGH = (2048, 768, 2048 * 768)
_LOW_512 = (512, 512, 512 * 512)
_PATCH_BUDGET = 1536 * 32 * 32  # patch models: at most 1536 patches of 32x32 px
_QWEN_TOKEN = 28 * 28
# Unknown models: a 2048x1536 pixel budget; the long side may grow to 6000 px (Zhipu's limit,
# the strictest we know) so a long screenshot keeps ~half its resolution instead of a sliver.
_GENERIC_AUTO = (6000, 1536, 2048 * 1536)
_GENERIC_HIGH = (6000, 2048, 2048 * 2048)
_ZHIPU_BYTES = 5 * _MB - 64 * 1024  # GLM-4V: at most 5 MB and 6000 px per image
_ANY = ABSOLUTE_MAX_SIDE

# (family, detail) -> (max long side, max short side, max pixels, max bytes). SiliconFlow has
# no "auto" row: its models' facts map auto to high.
_PROFILES: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("openai-tile", "auto"): (*_OPENAI_HIGH, 20 * _MB),
    ("openai-tile", "high"): (*_OPENAI_HIGH, 20 * _MB),
    ("openai-tile", "low"): (*_LOW_512, 20 * _MB),
    ("openai-patch", "auto"): (_ANY, _ANY, _PATCH_BUDGET, 20 * _MB),
    ("openai-patch", "high"): (_ANY, _ANY, _PATCH_BUDGET, 20 * _MB),
    ("openai-patch", "low"): (*_LOW_512, 20 * _MB),
    # DashScope: 1280 tokens of 28x28 px by default; 16384 with vl_high_resolution_images.
    ("qwen", "auto"): (_ANY, _ANY, 1280 * _QWEN_TOKEN, 10 * _MB),
    ("qwen", "high"): (_ANY, _ANY, 16384 * _QWEN_TOKEN, 10 * _MB),
    ("qwen", "low"): (_ANY, _ANY, 256 * _QWEN_TOKEN, 10 * _MB),
    # SiliconFlow: low = resized to 448x448 (256 tokens); high = up to 3584x3584 px.
    ("siliconflow-qwen", "high"): (_ANY, 3584, 16384 * _QWEN_TOKEN, 10 * _MB),
    ("siliconflow-qwen", "low"): (448, 448, 448 * 448, 10 * _MB),
    ("siliconflow", "high"): (*_GENERIC_HIGH, 10 * _MB),
    ("siliconflow", "low"): (448, 448, 448 * 448, 10 * _MB),
    ("zhipu", "auto"): (*_GENERIC_AUTO, _ZHIPU_BYTES),
    ("zhipu", "high"): (*_GENERIC_HIGH, _ZHIPU_BYTES),
    ("zhipu", "low"): (*_LOW_512, _ZHIPU_BYTES),
    ("generic", "auto"): (*_GENERIC_AUTO, 10 * _MB),
    ("generic", "high"): (*_GENERIC_HIGH, 10 * _MB),
    ("generic", "low"): (*_LOW_512, 10 * _MB),
}


def _normalise_detail(detail: str | None) -> str:
    value = (detail or "auto").strip().lower()
    if value not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
    return value


def image_profile(provider_id: str, model: str, detail: str = "auto") -> ImageProfile:
    """The size rule for one image sent to `model` on `provider_id` at `detail`."""
    facts = facts_for(provider_id, model)
    effective = facts.detail_for(_normalise_detail(detail))
    caps = _PROFILES.get((facts.image_family, effective)) or _PROFILES[("generic", effective)]
    return ImageProfile(facts.image_family, effective, *caps, vision=facts.vision)


def tile_tokens(width: int, height: int, base: int, per_tile: int) -> int:
    """OpenAI high detail: fit 2048x2048, short side to 768, count 512 px tiles."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    """OpenAI patch models: 32 px patches, scaled down to fit 1536, times a multiplier."""
    w, h = float(width), float(height)
    if math.ceil(w / 32) * math.ceil(h / 32) > 1536:
        ratio = math.sqrt(32 * 32 * 1536 / (w * h))
        ratio *= min(
            math.floor(w * ratio / 32) / (w * ratio / 32),
            math.floor(h * ratio / 32) / (h * ratio / 32),
        )
        w, h = w * ratio, h * ratio
    patches = min(1536, math.ceil(w / 32) * math.ceil(h / 32))
    return math.ceil(patches * multiplier)


def qwen_tokens(width: int, height: int, max_tokens: int, extra: int) -> int:
    """Qwen-VL: sides rounded up to 28 px, scaled into the pixel budget; 1 token per 28x28."""
    w, h = math.ceil(width / 28) * 28, math.ceil(height / 28) * 28
    if w * h > max_tokens * _QWEN_TOKEN:
        beta = math.sqrt(width * height / (max_tokens * _QWEN_TOKEN))
        w = max(28, math.floor(width / beta / 28) * 28)
        h = max(28, math.floor(height / beta / 28) * 28)
    return max(4, (w // 28) * (h // 28)) + extra


_QWEN_MAX_TOKENS = {"auto": 1280, "high": 16384, "low": 256}


def _count(rule: TokenRule, width: int, height: int, detail: str) -> int:
    if rule.kind == "tile" and detail == "low":
        return rule.base
    if rule.kind == "tile":
        return tile_tokens(width, height, rule.base, rule.per_tile)
    if rule.kind == "patch":
        return patch_tokens(width, height, rule.multiplier)
    if rule.kind == "siliconflow-qwen":
        # SiliconFlow's documented examples: low is always 256, high has no +2.
        return 256 if detail == "low" else qwen_tokens(width, height, 16384, extra=0)
    return qwen_tokens(width, height, _QWEN_MAX_TOKENS[detail], extra=2)


def estimate_image_tokens(
    width: int, height: int, provider_id: str, model: str, detail: str = "auto"
) -> int | None:
    """Input tokens one width x height image costs on this model, or None if unknown.

    "auto" is counted as "high" on OpenAI models (the upper bound: the API picks).
    """
    if width <= 0 or height <= 0:
        return None
    facts = facts_for(provider_id, model)
    if facts.token_rule is None:
        return None
    return _count(facts.token_rule, width, height, facts.detail_for(_normalise_detail(detail)))
