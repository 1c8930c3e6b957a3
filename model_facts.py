"""Model facts as data: what each preset model can do, how its images are sized and counted,
and what it costs.

One `ModelFacts` entry per preset model (provider id + model id) in `MODEL_TABLE`. Providers
(vision, reasoning, tools), images (size profile, token rule, what "auto" detail means) and
pricing all ask `facts_for(provider_id, model)`. Name patterns are used only for names that are
not in the table: what users type, custom / Ollama / OpenRouter names and `<P>_MODELS`
overrides. Prices stay in prices.json (or `PRICES_FILE`), so they can be edited without code;
they are read on first use, never at import.

Nothing here imports another module of the app.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

DETAILS = ("auto", "low", "high")
PRICES_FILE = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class Price:
    """A model's price per 1 million tokens."""

    input: float
    output: float
    currency: str


@dataclass(frozen=True)
class TokenRule:
    """How the input tokens of one image are counted (the formulas are in image_tokens.py)."""

    kind: str  # "tile" | "patch" | "qwen" | "siliconflow-qwen"
    base: int = 0  # tile: the whole image at low detail
    per_tile: int = 0  # tile: each 512 px tile at high detail
    multiplier: float = 1.0  # patch: tokens per 32 px patch


@dataclass(frozen=True)
class ModelFacts:
    provider_id: str
    model: str
    vision: bool  # reads image parts (a text-only API fails every later turn with images)
    reasoning: bool  # streams visible reasoning; only a UI hint, any model may send it
    tools: bool  # function calling
    # The image profile: `image_family` names the size caps per detail (image_tokens.py);
    # `auto_detail` is what "auto" means for images prepared for and sent to this model.
    image_family: str = "generic"
    token_rule: TokenRule | None = None  # None: this model's image cost is unknown
    auto_detail: str = "auto"
    listed: bool = True  # False: facts guessed from the name (not a preset model)

    @property
    def price(self) -> Price | None:
        """From the price table (read once, on first use): by name, or the part after '/'."""
        _, prices = load_prices()
        return prices.get(self.model) or prices.get(self.model.rsplit("/", 1)[-1])

    def detail_for(self, detail: str) -> str:
        """The detail images get for this model: "auto" may mean something else here."""
        return self.auto_detail if detail == "auto" else detail


# --------------------------------------------------------------------------- the table

_TILE_4O = TokenRule("tile", 85, 170)
_TILE_4O_MINI = TokenRule("tile", 2833, 5667)
_TILE_5 = TokenRule("tile", 70, 140)
_PATCH_MINI = TokenRule("patch", multiplier=1.62)
_PATCH_NANO = TokenRule("patch", multiplier=2.46)
_QWEN = TokenRule("qwen")
_SF_QWEN = TokenRule("siliconflow-qwen")
_TILE, _PATCH = "openai-tile", "openai-patch"


def _entry(
    provider_id: str,
    model: str,
    *,
    vision: bool = False,
    reasoning: bool = False,
    tools: bool = True,
    family: str = "generic",
    tokens: TokenRule | None = None,
) -> ModelFacts:
    # SiliconFlow reads "auto" as "low" (448x448), too small for screenshots: auto means
    # high there, both for the size prepared and for the detail sent.
    auto = "high" if provider_id == "siliconflow" else "auto"
    return ModelFacts(provider_id, model, vision, reasoning, tools, family, tokens, auto)


# In each provider's order of presentation: the first model is the provider's default.
MODEL_TABLE: tuple[ModelFacts, ...] = (
    _entry("openai", "gpt-4o", vision=True, family=_TILE, tokens=_TILE_4O),
    _entry("openai", "gpt-4o-mini", vision=True, family=_TILE, tokens=_TILE_4O_MINI),
    _entry("openai", "gpt-4.1", vision=True, family=_TILE, tokens=_TILE_4O),
    _entry("openai", "gpt-4.1-mini", vision=True, family=_PATCH, tokens=_PATCH_MINI),
    _entry("openai", "gpt-4.1-nano", vision=True, family=_PATCH, tokens=_PATCH_NANO),
    _entry("openai", "gpt-5", vision=True, family=_TILE, tokens=_TILE_5),
    _entry("openai", "gpt-5-mini", vision=True, family=_PATCH, tokens=_PATCH_MINI),
    _entry("openai", "gpt-5-nano", vision=True, family=_PATCH, tokens=_PATCH_NANO),
    # DeepSeek's API has no image input: an image part is a 400 "unknown variant `image_url`".
    _entry("deepseek", "deepseek-chat"),
    _entry("deepseek", "deepseek-reasoner", reasoning=True),
    _entry("doubao", "doubao-seed-1-6-250615", vision=True, reasoning=True),
    _entry("doubao", "doubao-seed-1-6-flash-250615", vision=True, reasoning=True),
    _entry("doubao", "doubao-1-5-vision-pro-32k-250115", vision=True, tools=False),
    _entry("doubao", "doubao-1-5-pro-32k-250115"),
    _entry("kimi", "moonshot-v1-8k"),
    _entry("kimi", "moonshot-v1-32k"),
    _entry("kimi", "moonshot-v1-128k"),
    _entry("kimi", "moonshot-v1-8k-vision-preview", vision=True, tools=False),
    _entry("kimi", "moonshot-v1-32k-vision-preview", vision=True, tools=False),
    _entry("kimi", "kimi-k2-0905-preview"),
    _entry("kimi", "kimi-k2-turbo-preview"),
    # DashScope counts one token per 28x28 px for all its models.
    _entry("qwen", "qwen-plus", family="qwen", tokens=_QWEN),
    _entry("qwen", "qwen-max", family="qwen", tokens=_QWEN),
    _entry("qwen", "qwen-turbo", family="qwen", tokens=_QWEN),
    _entry("qwen", "qwen-vl-max", vision=True, tools=False, family="qwen", tokens=_QWEN),
    _entry("qwen", "qwen-vl-plus", vision=True, tools=False, family="qwen", tokens=_QWEN),
    _entry("qwen", "qwq-plus", reasoning=True, family="qwen", tokens=_QWEN),
    _entry("zhipu", "glm-4-plus", family="zhipu"),
    _entry("zhipu", "glm-4-flash", family="zhipu"),
    _entry("zhipu", "glm-4v-plus", vision=True, tools=False, family="zhipu"),
    _entry("zhipu", "glm-4v", vision=True, tools=False, family="zhipu"),
    _entry("zhipu", "glm-4v-flash", vision=True, tools=False, family="zhipu"),
    _entry("siliconflow", "deepseek-ai/DeepSeek-V3", family="siliconflow"),
    _entry(
        "siliconflow", "deepseek-ai/DeepSeek-R1", reasoning=True, tools=False, family="siliconflow"
    ),
    _entry("siliconflow", "Qwen/Qwen2.5-72B-Instruct", family="siliconflow"),
    _entry(
        "siliconflow",
        "Qwen/Qwen2.5-VL-72B-Instruct",
        vision=True,
        tools=False,
        family="siliconflow-qwen",
        tokens=_SF_QWEN,
    ),
    _entry("openrouter", "openai/gpt-4o", vision=True, family=_TILE, tokens=_TILE_4O),
    _entry("openrouter", "openai/gpt-4o-mini", vision=True, family=_TILE, tokens=_TILE_4O_MINI),
    _entry("openrouter", "anthropic/claude-sonnet-4", vision=True),
    _entry("openrouter", "google/gemini-2.5-flash", vision=True),
    _entry("openrouter", "deepseek/deepseek-chat"),
    _entry("openrouter", "deepseek/deepseek-r1", reasoning=True, tools=False),
    _entry("ollama", "llama3.2"),
    _entry("ollama", "qwen3", reasoning=True),
    _entry("ollama", "llava", vision=True, tools=False),
    _entry("ollama", "qwen2.5vl", vision=True, tools=False, family="qwen", tokens=_QWEN),
    _entry("ollama", "gemma3", vision=True, tools=False),
    # The offline demo describes images and shows a "thinking" part when asked to think.
    _entry("demo", "demo", vision=True, reasoning=True, tools=False),
)

_BY_KEY: dict[tuple[str, str], ModelFacts] = {
    (facts.provider_id, facts.model.lower()): facts for facts in MODEL_TABLE
}


def preset_models(provider_id: str) -> tuple[str, ...]:
    """The preset model ids of a provider, its default first."""
    return tuple(f.model for f in MODEL_TABLE if f.provider_id == provider_id)


# --------------------------------------------------------------------------- name patterns
# Only for names outside the table. Substring regexes on the lower-cased id (an "org/" prefix
# or ":tag" is harmless).

VISION_PATTERNS: tuple[str, ...] = (
    r"vision",  # moonshot-v1-8k-vision-preview, doubao-1-5-vision-pro, llama3.2-vision
    r"-vl",  # qwen-vl-max, Qwen2.5-VL-72B-Instruct, qwen3-vl
    r"vl-",
    r"qwen2\.5vl",  # Ollama's tag
    r"internvl",
    r"qvq",
    r"minicpm-v",
    r"pixtral",
    r"glm-4(\.\d+)?v",  # glm-4v, glm-4v-plus, glm-4.5v
    r"gpt-4o",
    r"gpt-4\.1",
    r"gpt-4-turbo",
    r"gpt-5",
    r"(^|/)o3($|-)",
    r"(^|/)o4-mini",
    r"llava",  # llava, bakllava
    r"gemma-?3",
    r"doubao-seed",  # the seed 1.6 family is multimodal
    r"claude",
    r"gemini",
    r"kimi-k2\.5",
)
# Names that match a vision pattern but are not image-reading chat models.
NOT_VISION_PATTERNS: tuple[str, ...] = (
    r"audio",
    r"realtime",
    r"tts",
    r"transcribe",
    r"embed",
    r"gemma-?3:(270m|1b)",  # the smallest Gemma 3 sizes are text-only
    r"(^|/)(o1-mini|o1-preview|o3-mini)",  # named like image models, without image input
)
REASONING_PATTERNS: tuple[str, ...] = (
    r"reasoner",  # deepseek-reasoner
    r"(^|[/\-_])r1($|[\-:_])",  # deepseek-r1, DeepSeek-R1, deepseek-r1:7b, R1 distills
    r"qwq",
    r"qvq",
    r"qwen3",
    r"thinking",  # kimi-k2-thinking, doubao-seed-1-6-thinking, glm-4.1v-thinking
    r"doubao-seed",  # thinks by default
    r"glm-z1",
    r"glm-4\.[5-9]",
    r"gpt-oss",
    r"magistral",
)
# Function calling: most current chat models have it; these families do not (or not on the
# OpenAI-compatible APIs), so a tool list is not offered to them.
NOT_TOOLS_PATTERNS: tuple[str, ...] = (
    r"llava",
    r"gemma",
    r"-vl",
    r"vl-",
    r"qwen2\.5vl",
    r"glm-4(\.\d+)?v",
    r"vision",
    r"(^|[/\-_])r1($|[\-:_])",
    r"(^|/)o1-(mini|preview)",
    r"audio",
    r"tts",
    r"embed",
)
# Providers whose API decides a fact for every model name: DeepSeek takes no images; a custom
# server is unknown, so the user is trusted unless CUSTOM_VISION_MODELS says less; the demo
# answers any name the same way.
_PROVIDER_FACTS: dict[str, dict[str, bool]] = {
    "deepseek": {"vision": False},
    "custom": {"vision": True},
    "demo": {"vision": True, "reasoning": True, "tools": False},
}


def _matches(patterns: tuple[str, ...], model: str) -> bool:
    name = model.strip().lower()
    return any(re.search(pattern, name) for pattern in patterns)


def vision_by_name(model: str) -> bool:
    """True when the model id looks like an image-reading chat model (name rules above)."""
    return _matches(VISION_PATTERNS, model) and not _matches(NOT_VISION_PATTERNS, model)


def reasoning_by_name(model: str) -> bool:
    return _matches(REASONING_PATTERNS, model)


def tools_by_name(model: str) -> bool:
    return not _matches(NOT_TOOLS_PATTERNS, model)


# Image families by name. gpt-4o-mini is listed before gpt-4o so that the longer name wins.
_TILE_NAMES: tuple[tuple[str, TokenRule], ...] = (
    ("gpt-4o-mini", _TILE_4O_MINI),
    ("gpt-4o", _TILE_4O),
    ("chatgpt-4o", _TILE_4O),
    ("gpt-4.1", _TILE_4O),
    ("gpt-4.5", _TILE_4O),
    ("gpt-4-turbo", _TILE_4O),
    ("gpt-4-vision", _TILE_4O),
    ("gpt-5", _TILE_5),
    ("o1", TokenRule("tile", 75, 150)),
    ("o3", TokenRule("tile", 75, 150)),
)
_PATCH_NAMES: tuple[tuple[str, TokenRule], ...] = (
    ("gpt-4.1-mini", _PATCH_MINI),
    ("gpt-4.1-nano", _PATCH_NANO),
    ("o4-mini", TokenRule("patch", multiplier=1.72)),
    ("gpt-5-mini", _PATCH_MINI),
    ("gpt-5-nano", _PATCH_NANO),
)


def _model_key(model: str) -> str:
    """'openai/gpt-4o' -> 'gpt-4o'; 'qwen2.5vl:7b' -> 'qwen2.5vl' (router prefix, Ollama tag)."""
    key = (model or "").strip().lower().rsplit("/", 1)[-1]
    return key.split(":", 1)[0]


def _named(key: str, names: tuple[tuple[str, TokenRule], ...]) -> TokenRule | None:
    """Prefix match on a word boundary: 'gpt-4o' matches 'gpt-4o-2024-08-06', not 'gpt-4omg'."""
    for prefix, rule in names:
        if key == prefix or (key.startswith(prefix) and not key[len(prefix)].isalnum()):
            return rule
    return None


def _is_qwen_vision(key: str) -> bool:
    return "qvq" in key or ("qwen" in key and ("vl" in key or "omni" in key))


def _image_rule_by_name(provider_id: str, model: str) -> tuple[str, TokenRule | None]:
    key = _model_key(model)
    if provider_id == "siliconflow":
        return ("siliconflow-qwen", _SF_QWEN) if _is_qwen_vision(key) else ("siliconflow", None)
    if rule := _named(key, _PATCH_NAMES):
        return _PATCH, rule
    if not _matches(NOT_VISION_PATTERNS, key) and (rule := _named(key, _TILE_NAMES)):
        return _TILE, rule
    if provider_id == "qwen" or _is_qwen_vision(key):
        return "qwen", _QWEN
    if provider_id == "zhipu":
        return "zhipu", None
    return "generic", None


@functools.lru_cache(maxsize=1024)
def _facts_by_name(provider_id: str, model: str) -> ModelFacts:
    fixed = _PROVIDER_FACTS.get(provider_id, {})
    family, rule = _image_rule_by_name(provider_id, model)
    return ModelFacts(
        provider_id,
        model,
        vision=fixed.get("vision", vision_by_name(model)),
        reasoning=fixed.get("reasoning", reasoning_by_name(model)),
        tools=fixed.get("tools", tools_by_name(model)),
        image_family=family,
        token_rule=rule,
        auto_detail="high" if provider_id == "siliconflow" else "auto",
        listed=False,
    )


def facts_for(provider_id: str, model: str) -> ModelFacts:
    """The facts of `model` on `provider_id`: the table's entry, else guessed from the name."""
    provider = (provider_id or "").strip().lower()
    name = (model or "").strip()
    return _BY_KEY.get((provider, name.lower())) or _facts_by_name(provider, name)


def effective_detail(provider_id: str, detail: str | None, model: str = "") -> str:
    """The detail images are prepared and sent with ("auto" where unknown or invalid)."""
    value = (detail or "auto").strip().lower()
    return facts_for(provider_id, model).detail_for(value if value in DETAILS else "auto")


# --------------------------------------------------------------------------- prices


@functools.cache
def load_prices(path: str | None = None) -> tuple[str, dict[str, Price]]:
    """(as_of date, prices by model) from prices.json, or from PRICES_FILE when set."""
    source = Path(path or os.environ.get("PRICES_FILE") or PRICES_FILE)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        models = {
            name: Price(float(p["input"]), float(p["output"]), str(p.get("currency", "USD")))
            for name, p in data["models"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"Cannot read the price table {source}: {exc}") from None
    return str(data.get("as_of", "")), models


def price_of(model: str, provider_id: str = "") -> Price | None:
    """The price of a model, by its name or (OpenRouter's vendor/model) the part after '/'."""
    return facts_for(provider_id, model).price
