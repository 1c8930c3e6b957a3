"""images.py: a generated corpus of real-world and hostile images, each with its expected outcome.

No wall-clock assertions here: speed belongs to bench/bench_images.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import pickle
import random
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import image_tokens
import images
from images import ImageRejected, PreparedImage, estimate_image_tokens, image_profile
from tests import image_corpus as corpus

# --------------------------------------------------------------------------- helpers


def opened(prepared: PreparedImage) -> Image.Image:
    img = Image.open(io.BytesIO(prepared.data))
    img.load()
    return img


def rgb_at(prepared: PreparedImage, xy: tuple[int, int]) -> tuple[int, int, int]:
    return opened(prepared).convert("RGB").getpixel(xy)  # type: ignore[return-value]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def rejected(raw: bytes, name: str = "upload.bin", **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        images.prepare_image(raw, name=name, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    return corpus.photo_jpeg()  # 4000x3000, ~4.4 MB, made once for the module


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_exif_transpose(orientation):
    raw = corpus.exif_rotated_jpeg(orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")
    prepared = images.prepare_image(raw, name="phone.jpg")
    assert (prepared.width, prepared.height) == expected.size
    assert (prepared.original_width, prepared.original_height) == expected.size
    out = opened(prepared).convert("RGB")
    for corner in [(5, 5), (expected.width - 6, 5), (5, expected.height - 6)]:
        assert close(out.getpixel(corner), expected.getpixel(corner), 30), corner


def test_orientation_6_is_portrait_with_marker_top_right():
    prepared = images.prepare_image(corpus.exif_rotated_jpeg(6), name="phone.jpg")
    assert (prepared.width, prepared.height) == (300, 400)
    assert close(rgb_at(prepared, (prepared.width - 10, 10)), corpus.RED, 40)
    assert close(rgb_at(prepared, (10, 10)), (200, 200, 200), 20)
    assert not opened(prepared).getexif()  # metadata stripped, orientation baked in


def test_transparent_png_becomes_white_not_black():
    prepared = images.prepare_image(corpus.rgba_png(), name="logo.png")
    assert opened(prepared).mode == "RGB"
    assert rgb_at(prepared, (5, 5)) == (255, 255, 255)
    assert rgb_at(prepared, (60, 5)) == corpus.RED


def test_la_png_flattens_onto_white():
    prepared = images.prepare_image(corpus.la_png(), name="la.png")
    img = opened(prepared)
    assert img.mode in ("L", "RGB")
    assert img.convert("L").getpixel((5, 5)) == 255
    assert img.convert("L").getpixel((30, 5)) == 100


@pytest.mark.parametrize(
    ("raw", "colour"),
    [
        (corpus.palette_transparent_png(), corpus.BLUE),
        (corpus.palette_transparent_gif(), corpus.GREEN),
    ],
    ids=["png", "gif"],
)
def test_palette_with_transparent_index_flattens_onto_white(raw, colour):
    prepared = images.prepare_image(raw, name="icon")
    assert rgb_at(prepared, (5, 5)) == (255, 255, 255)
    assert rgb_at(prepared, (30, 5)) == colour


def test_pa_mode_is_flattened():
    img = Image.new("PA", (10, 10))
    img.putpalette([0, 0, 255] * 256)
    working = images._working_mode(img)
    assert working.mode == "RGBA"
    assert images._flatten(working).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_transparent_colour_key_flattens_onto_white(mode):
    img = Image.new(mode, (20, 10), 0)
    img.paste(100 if mode == "L" else (0, 0, 200), (10, 0, 20, 10))
    key = 0 if mode == "L" else (0, 0, 0)
    prepared = images.prepare_image(corpus.encode(img, "PNG", transparency=key), name="key.png")
    assert rgb_at(prepared, (2, 2)) == (255, 255, 255)
    assert rgb_at(prepared, (15, 2)) == ((100,) * 3 if mode == "L" else (0, 0, 200))


def test_global_pillow_state_is_left_alone():
    from PIL import ImageFile

    images.prepare_image(corpus.rgba_png(), name="x.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    pillow_default = 1024 * 1024 * 1024 // 4 // 3
    assert pillow_default == Image.MAX_IMAGE_PIXELS


def test_16_bit_mid_grey_stays_mid_grey():
    prepared = images.prepare_image(corpus.gray16_png(32768), name="scan16.png")
    assert opened(prepared).convert("L").getpixel((10, 10)) == 128


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("I;16", 65535, 255),
        ("I;16", 0, 0),
        ("I;16", 200, 0),  # a dark 16-bit value stays dark
        ("I", 40000, 156),
        ("I", 200, 200),
        ("F", 0.5, 127),
        ("F", 1000.0, 0),
    ],
)
def test_high_bit_depth_modes_scale_to_8_bits(mode, value, expected):
    result = images._to_8bit(Image.new(mode, (4, 4), value))
    assert result.mode == "L"
    assert abs(result.getpixel((0, 0)) - expected) <= 1


def test_cmyk_jpeg_is_converted_to_rgb():
    prepared = images.prepare_image(corpus.cmyk_jpeg(), name="print.jpg")
    assert prepared.original_format == "JPEG"
    assert opened(prepared).mode == "RGB"
    assert close(rgb_at(prepared, (30, 30)), corpus.RED, 40)


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [(corpus.animated_gif(), "GIF"), (corpus.animated_webp(), "WEBP"), (corpus.mpo_jpeg(), "JPEG")],
    ids=["gif", "webp", "mpo"],
)
def test_multi_frame_images_send_the_first_frame(raw, fmt):
    prepared = images.prepare_image(raw, name="anim")
    assert prepared.original_format == fmt
    assert close(rgb_at(prepared, (20, 20)), corpus.RED, 12)
    assert getattr(opened(prepared), "n_frames", 1) == 1


def test_tiny_image_is_never_upscaled():
    raw = corpus.encode(Image.new("RGB", (16, 16), corpus.BLUE), "PNG")
    for provider, model in [("", ""), ("openai", "gpt-4o"), ("qwen", "qwen-vl-max")]:
        prepared = images.prepare_image(raw, name="tiny.png", provider_id=provider, model=model)
        assert (prepared.width, prepared.height) == (16, 16)


def test_panorama_keeps_a_legible_short_side():
    raw = corpus.encode(corpus.photo_image(2400, 200).resize((12000, 1000)), "JPEG", quality=80)
    prepared = images.prepare_image(raw, name="pano.jpg")
    assert (prepared.original_width, prepared.original_height) == (12000, 1000)
    assert prepared.width <= 6000 and prepared.height >= 450  # the seed gave 1024x85


def test_long_screenshot_keeps_text_size_within_the_model_budget():
    raw = corpus.encode(corpus.screenshot_image(1080, 12000), "PNG")
    generic = images.prepare_image(raw, name="chat.png")
    assert generic.mime == "image/png"
    assert generic.width >= 500 and generic.height <= 6000  # about half scale, not 51x1024
    high = images.prepare_image(raw, name="chat.png", provider_id="qwen", detail="high")
    assert high.width >= 700 and high.height == 8192  # Qwen high: 12.8 MP, our 8192 px cap
    gpt = images.prepare_image(raw, name="chat.png", provider_id="openai", model="gpt-4o")
    assert max(gpt.width, gpt.height) == 2048  # gpt-4o itself fits 2048x2048: more is waste


def test_12mp_photo_is_sized_to_each_profile(photo_12mp):
    cases = {
        ("openai", "gpt-4o", "auto"): (1024, 768),
        ("openai", "gpt-4o", "low"): (512, 384),
        ("", "", "auto"): (2048, 1536),
    }
    for (provider, model, detail), (max_w, max_h) in cases.items():
        prepared = images.prepare_image(
            photo_12mp, name="p.jpg", provider_id=provider, model=model, detail=detail
        )
        assert prepared.mime == "image/jpeg"
        assert max_w * 0.95 <= prepared.width <= max_w
        assert max_h * 0.95 <= prepared.height <= max_h
        assert len(prepared.data) < len(photo_12mp) / 5
    qwen = images.prepare_image(photo_12mp, name="p.jpg", provider_id="qwen", model="qwen-vl-max")
    assert 0.9 * 1280 * 784 <= qwen.width * qwen.height <= 1280 * 784


def test_screenshot_goes_out_as_png_and_photo_as_jpeg(photo_12mp):
    shot = images.prepare_image(corpus.screenshot_png(), name="shot.png", model="gpt-4o")
    assert shot.mime == "image/png" and (shot.width, shot.height) == (1365, 768)
    bmp = images.prepare_image(corpus.bmp_screenshot(), name="shot.bmp")
    assert bmp.mime == "image/png" and bmp.original_format == "BMP"
    photo_png = corpus.encode(corpus.photo_image(600, 400), "PNG")
    assert images.prepare_image(photo_png, name="photo.png").mime == "image/jpeg"


def test_small_clean_file_is_sent_as_is_but_exif_is_never_leaked():
    clean = corpus.encode(corpus.photo_image(800, 600), "JPEG", quality=90)
    prepared = images.prepare_image(clean, name="small.jpg")
    assert prepared.data == clean
    with_gps = corpus.exif_gps_jpeg()
    prepared = images.prepare_image(with_gps, name="gps.jpg")
    assert prepared.data != with_gps
    assert not opened(prepared).getexif()


def test_prepared_image_helpers():
    prepared = images.prepare_image(corpus.rgba_png(), name="/tmp/gradio/x/logo.png")
    assert prepared.name == "logo.png"
    assert prepared.extension == "png"
    assert prepared.data_url().startswith("data:image/png;base64,iVBOR")
    assert re.fullmatch(r"[0-9a-f]{64}", prepared.sha256)
    assert "data=" not in repr(prepared)  # no megabytes of bytes in logs


def test_output_over_the_provider_byte_limit_is_reencoded_smaller():
    noisy = Image.effect_noise((800, 800), 100).convert("RGB")
    data, mime, img = images._encode_within(noisy, True, 60_000)
    assert mime == "image/jpeg" and len(data) <= 60_000 and img.width < 800
    data, mime, img = images._encode_within(images._to_palette(noisy), True, 60_000)
    assert mime == "image/jpeg" and len(data) <= 60_000 and img.mode == "RGB"


# --------------------------------------------------------------------------- hostile input

ACCEPTED = "Send a JPEG, PNG, GIF, WEBP or BMP image."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "the file is empty"),
        (random.Random(3).randbytes(5000), "not a JPEG, PNG, GIF, WEBP or BMP image"),
        (b"just some text\n" * 20, "not a JPEG, PNG, GIF, WEBP or BMP image"),
        (corpus.SVG, "SVG is not supported"),
        (corpus.HTML, "web page (HTML)"),
        (corpus.PDF, "PDF documents are not supported"),
        (corpus.HEIC, "HEIC/HEIF photos are not supported"),
        (corpus.encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF is not supported"),
    ],
    ids=["empty", "random", "text", "svg", "html", "pdf", "heic", "tiff"],
)
def test_non_images_are_refused_naming_the_file_and_the_accepted_formats(raw, expected):
    exc = rejected(raw, name="upload.bin")
    assert exc.name == "upload.bin"
    assert expected in exc.reason
    assert str(exc).startswith('"upload.bin" was not sent: ')
    assert ACCEPTED in str(exc)


def test_svg_message_matches_the_contract():
    exc = rejected(corpus.SVG, name="photo.svg")
    assert str(exc) == f'"photo.svg" was not sent: SVG is not supported. {ACCEPTED}'
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.name, copy.reason) == (str(exc), exc.name, exc.reason)


@pytest.mark.parametrize(
    "raw",
    [corpus.photo_jpeg(640, 480)[:20_000], corpus.screenshot_png(640, 480)[:9_000]],
    ids=["jpeg", "png"],
)
def test_truncated_files_are_refused_not_half_sent(raw):
    assert "damaged or incomplete" in rejected(raw).reason


@pytest.mark.parametrize(
    ("raw", "size_text"),
    [
        (corpus.png_declaring(20_000, 20_000), "megapixels"),  # Pillow's own bomb error
        (corpus.png_declaring(8_000, 7_500), "8000×7500 (60 megapixels)"),  # our 50 MP limit
        (corpus.gif_declaring(65_535, 65_535), "megapixels"),
        (corpus.gif_declaring(10_000, 6_000), "10000×6000 (60 megapixels)"),
    ],
    ids=["png-400mp", "png-60mp", "gif-4gp", "gif-60mp"],
)
def test_decompression_bombs_are_refused_from_the_header(raw, size_text, monkeypatch):
    def no_decoding(self):  # the refusal must happen before any pixel is decoded
        raise AssertionError("load() called on a bomb")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    assert len(raw) < 1000
    exc = rejected(raw, name="bomb.png")
    assert size_text in exc.reason and "limit is 50 megapixels" in exc.reason


def test_file_over_max_bytes_is_refused_before_decoding(monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("Image.open called on an oversized file")

    monkeypatch.setattr(images.Image, "open", no_open)
    exc = rejected(b"\xff\xd8\xff" + b"\x00" * 3000, name="huge.jpg", max_bytes=2048)
    assert "the limit is 2.0 KB" in exc.reason


def test_name_is_sanitised_for_display():
    exc = rejected(b"", name="C:\\Users\\me\\evil\x1b[31m.png")
    assert exc.name == "evil[31m.png"


# --------------------------------------------------------------------------- profiles, tokens


def test_profiles_per_provider_model_and_detail():
    gpt = image_profile("openai", "gpt-4o", "auto")
    assert (gpt.family, gpt.max_long_side, gpt.max_short_side) == ("openai-tile", 2048, 768)
    high = image_profile("openai", "gpt-4o", "high")
    assert high == dataclasses.replace(gpt, detail="high")
    assert image_profile("openrouter", "openai/gpt-4o", "HIGH") == high
    assert image_profile("openai", "gpt-4o", "low").max_long_side == 512
    assert image_profile("openai", "gpt-4.1-mini").family == "openai-patch"
    assert image_profile("openai", "gpt-4.1-mini").max_pixels == 1536 * 32 * 32
    assert image_profile("qwen", "qwen-vl-max").max_pixels == 1280 * 28 * 28
    assert image_profile("qwen", "qwen-vl-max", "high").max_pixels == 16384 * 28 * 28
    assert image_profile("ollama", "qwen2.5vl:7b").family == "qwen"
    # SiliconFlow reads auto as low (448 px): the app sends high instead, and sizes for it.
    sf = image_profile("siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "auto")
    assert sf == image_profile("siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "high")
    assert (sf.detail, sf.max_short_side) == ("high", 3584)
    low = image_profile("siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "low")
    assert (low.detail, low.max_long_side) == ("low", 448)
    zhipu = image_profile("zhipu", "glm-4v-plus")
    assert zhipu.max_bytes < 5 * 1024 * 1024 and zhipu.max_long_side <= 6000
    for provider, model in [
        ("doubao", "doubao-seed-1-6-250615"),
        ("kimi", "moonshot-v1-8k"),
        ("demo", ""),
        ("custom", "llava"),
        ("", ""),
    ]:
        assert image_profile(provider, model).family == "generic"
    assert image_profile("openai", "gpt-4o", None).detail == "auto"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detail"):
        image_profile("openai", "gpt-4o", "ultra")


@pytest.mark.parametrize(
    ("size", "provider", "model", "detail", "tokens"),
    [
        ((1024, 1024), "openai", "gpt-4o", "high", 765),  # OpenAI docs
        ((2048, 4096), "openai", "gpt-4o", "high", 1105),  # docs: 768x1536, 6 tiles
        ((4096, 8192), "openai", "gpt-4o", "low", 85),
        ((1024, 1024), "openai", "gpt-4o", "auto", 765),  # auto counted as high
        ((1024, 768), "openrouter", "openai/gpt-4o-2024-08-06", "high", 765),
        ((1024, 1024), "openai", "gpt-4o-mini", "high", 2833 + 5667 * 4),
        ((1024, 1024), "openai", "gpt-4.1-mini", "auto", 1659),  # 1024 patches x 1.62
        ((1024, 1024), "openai", "gpt-5-nano", "auto", 2520),  # 1024 x 2.46
        ((1024, 1024), "siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "high", 1369),  # docs
        ((224, 448), "siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "high", 128),  # docs
        ((3172, 4096), "siliconflow", "Qwen/Qwen2.5-VL-72B-Instruct", "low", 256),  # docs
        ((1024, 1024), "qwen", "qwen-vl-max", "auto", 35 * 35 + 2),  # scaled into 1280 tokens
        ((280, 280), "qwen", "qwen-vl-plus", "auto", 102),
        ((1024, 1024), "deepseek", "deepseek-chat", "auto", None),
        ((1024, 1024), "kimi", "moonshot-v1-8k-vision-preview", "auto", None),
        ((1024, 1024), "openai", "o3-mini", "auto", None),  # no image input
    ],
)
def test_token_estimates(size, provider, model, detail, tokens):
    assert estimate_image_tokens(*size, provider, model, detail) == tokens


def test_patch_models_scale_to_1536_patches_like_the_docs_example():
    assert image_tokens.patch_tokens(1800, 2400, 1.0) == 1452  # OpenAI docs: 1056x1408


# --------------------------------------------------------------------------- receipt, describe


def test_receipt_for_a_photo(photo_12mp):
    prepared = images.prepare_image(photo_12mp, name="photo.jpg", model="gpt-4o")
    text = images.receipt_text(prepared, "openai", "gpt-4o")
    assert re.fullmatch(
        r"photo\.jpg: \d\.\d MB 4000×3000 → \d+ KB 1000×750 JPEG · ~765 image tokens", text
    ), text


def test_receipt_unknown_tokens_and_sent_as_is():
    prepared = images.prepare_image(corpus.screenshot_png(), name="shot.png")
    text = images.receipt_text(prepared, "zhipu", "glm-4v-plus")
    assert text.startswith("shot.png: ") and "1920×1080 PNG, sent as is" in text
    assert text.endswith("· image tokens unknown for glm-4v-plus")


def test_format_bytes():
    assert [images.format_bytes(n) for n in (512, 1536, 320_000, 5_138_022)] == [
        "512 B",
        "1.5 KB",
        "312 KB",
        "4.9 MB",
    ]


def test_describe_image_for_the_demo_provider():
    raw = corpus.encode(Image.new("RGB", (300, 200), (20, 40, 200)), "PNG")
    info = images.describe_image(raw)
    assert info == {
        "width": 300,
        "height": 200,
        "format": "PNG",
        "mode": "RGB",
        "colours": ["blue"],
    }
    assert images.describe_image(corpus.rgba_png())["colours"][:2] in (
        ["white", "red"],
        ["red", "white"],
    )
    with pytest.raises(ImageRejected):
        images.describe_image(b"<svg/>")


# --------------------------------------------------------------------------- concurrency


@pytest.mark.anyio
async def test_prepare_images_keeps_the_event_loop_free(photo_12mp):
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    results = await images.prepare_images([(f"p{i}.jpg", photo_12mp) for i in range(4)])
    during = ticks - before
    stop.set()
    await task
    assert [r.name for r in results] == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    assert during > 0  # the loop kept running while the images were prepared


@pytest.mark.anyio
async def test_prepare_images_really_runs_two_at_once(monkeypatch):
    barrier = threading.Barrier(2, timeout=10)  # passes only if two calls overlap
    threads: list[str] = []
    original = images.prepare_image

    def rendezvous(raw, **kwargs):
        threads.append(threading.current_thread().name)
        barrier.wait()
        return original(raw, **kwargs)

    monkeypatch.setattr(images, "prepare_image", rendezvous)
    raw = corpus.rgba_png()
    results = await images.prepare_images([("a.png", raw), ("b.png", raw)])
    assert len(results) == 2
    assert all(name.startswith("images") for name in threads)


@pytest.mark.anyio
async def test_prepare_images_reports_every_bad_file():
    items = [("ok.png", corpus.rgba_png()), ("a.svg", corpus.SVG), ("b.pdf", corpus.PDF)]
    with pytest.raises(ImageRejected) as info:
        await images.prepare_images(items, provider_id="openai", model="gpt-4o")
    exc = info.value
    assert exc.name == "a.svg"
    assert [r.name for r in exc.rejected] == ["a.svg", "b.pdf"]
    assert '"b.pdf" (PDF documents are not supported)' in str(exc)


# --------------------------------------------------------------------------- fuzz

SAMPLES = list(corpus.small_samples().values())


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # half of the mutations hit the first 64 bytes, where the headers are
        pos = draw(st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "truncate", "splice", "overwrite", "insert", "dims"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = draw(st.sampled_from(SAMPLES))
            start = draw(st.integers(0, len(other) - 1))
            data[pos:] = other[start:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # a plausible big dimension, where headers keep sizes
            data[pos : pos + 2] = draw(st.sampled_from([b"\xff\xff", b"\x7f\x00", b"\x00\x00"]))
    return bytes(data)


# database=None: no .hypothesis/ directory in the repository; failures print their input.
@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    raw=mutated_images(),
    profile=st.sampled_from([("", ""), ("openai", "gpt-4o"), ("qwen", "qwen-vl-max")]),
)
def test_fuzzed_images_only_ever_raise_image_rejected(raw, profile):
    try:
        prepared = images.prepare_image(raw, name="fuzz", provider_id=profile[0], model=profile[1])
    except ImageRejected as exc:
        assert str(exc).startswith('"fuzz" was not sent: ')
        return
    assert prepared.data and prepared.width >= 1 and prepared.height >= 1
    opened(prepared)  # whatever we send must itself be a valid image


@settings(max_examples=60, deadline=None, database=None)
@given(raw=mutated_images())
def test_fuzzed_describe_image_only_raises_image_rejected(raw):
    with contextlib.suppress(ImageRejected):
        images.describe_image(raw)
