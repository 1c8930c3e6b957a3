"""model_facts.py: one table of model facts, used alike by providers, images and pricing."""

from __future__ import annotations

import pytest

from image_tokens import estimate_image_tokens, image_profile
from model_facts import MODEL_TABLE, TokenRule, effective_detail, facts_for, load_prices, price_of
from providers import Providers

REGISTRY = Providers({})
TABLE = [(facts.provider_id, facts.model) for facts in MODEL_TABLE]


def test_every_preset_model_has_facts_from_the_table():
    presets = [(p.id, m) for p in REGISTRY.all() for m in p.models]
    assert presets, "the presets list models"
    for provider_id, model in presets:
        facts = facts_for(provider_id, model)
        assert facts.listed, f"{provider_id}/{model} has no table entry"
        assert (facts.provider_id, facts.model) == (provider_id, model)
    assert sorted(presets) == sorted(TABLE), "every table entry is some preset's model"


@pytest.mark.parametrize(("provider_id", "model"), TABLE)
def test_providers_and_images_agree_on_what_a_model_can_do(provider_id, model):
    facts = facts_for(provider_id, model)
    provider = REGISTRY.get(provider_id)
    assert provider.supports_vision(model) is facts.vision
    assert image_profile(provider_id, model).vision is facts.vision
    assert provider.supports_reasoning(model) is facts.reasoning
    assert provider.supports_tools(model) is facts.tools
    assert (model in provider.public_info()["vision_models"]) is facts.vision
    # what images are sized for is what is sent (chat passes effective_detail on)
    for detail in ("auto", "low", "high"):
        assert image_profile(provider_id, model, detail).detail == effective_detail(
            provider_id, detail, model
        )


def test_prices_come_from_the_price_table_for_priced_models():
    _, prices = load_prices()
    priced = 0
    for provider_id, model in TABLE:
        expected = prices.get(model) or prices.get(model.rsplit("/", 1)[-1])
        assert facts_for(provider_id, model).price == expected
        assert price_of(model, provider_id) == expected
        priced += expected is not None
    assert priced >= 20
    for provider_id in ("openai", "deepseek"):  # every preset of these is priced
        assert all(facts_for(provider_id, m).price for m in REGISTRY.get(provider_id).models)


def test_typed_names_get_facts_from_name_patterns():
    custom = facts_for("custom", "my-org/finetune-7b")
    assert not custom.listed and custom.vision  # a custom server is trusted
    assert (custom.image_family, custom.token_rule, custom.price) == ("generic", None, None)
    dated = facts_for("openrouter", "openai/gpt-4o-2024-08-06")
    assert not dated.listed and dated.vision and dated.tools and not dated.reasoning
    assert (dated.image_family, dated.token_rule) == ("openai-tile", TokenRule("tile", 85, 170))
    tagged = facts_for("ollama", "qwen2.5vl:7b")
    assert not tagged.listed and tagged.vision and not tagged.tools
    assert tagged.image_family == "qwen"
    r1 = facts_for("ollama", "deepseek-r1:7b")
    assert r1.reasoning and not r1.vision and not r1.tools
    assert not facts_for("deepseek", "deepseek-vl2").vision  # DeepSeek's API takes no images
    assert not facts_for("openai", "o3-mini").vision
    assert estimate_image_tokens(1024, 1024, "openai", "o3-mini") is None
    assert facts_for("", "gpt-4o-mini").token_rule == TokenRule("tile", 2833, 5667)


def test_table_names_are_matched_whatever_the_case_and_spaces():
    assert facts_for(" SiliconFlow ", "qwen/qwen2.5-vl-72b-instruct ") is facts_for(
        "siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct"
    )


def test_siliconflow_auto_detail_is_high_everywhere():
    model = "Qwen/Qwen2.5-VL-72B-Instruct"
    assert effective_detail("siliconflow", "auto") == "high"
    assert effective_detail("siliconflow", "auto", model) == "high"
    assert effective_detail("siliconflow", "low", model) == "low"
    assert effective_detail("openai", "auto", "gpt-4o") == "auto"
    assert effective_detail("openai", "ultra", "gpt-4o") == "auto"  # unknown values: auto
    assert image_profile("siliconflow", model, "auto").detail == "high"
    auto = estimate_image_tokens(1024, 1024, "siliconflow", model, "auto")
    assert auto == estimate_image_tokens(1024, 1024, "siliconflow", model, "high") == 1369


def test_vision_models_env_list_overrides_the_facts():
    registry = Providers({"DASHSCOPE_API_KEY": "k", "DASHSCOPE_VISION_MODELS": "qwen-plus"})
    qwen = registry.get("qwen")
    assert qwen.supports_vision("qwen-plus") and not facts_for("qwen", "qwen-plus").vision
    assert not qwen.supports_vision("qwen-vl-max")  # the list is the whole truth
