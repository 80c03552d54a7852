"""Request validation against the model catalog: every documented rule, with errors that name it."""

from __future__ import annotations

from typing import Any

import pytest

from wanx_mcp.catalog import MODELS, get_model
from wanx_mcp.errors import InvalidInput
from wanx_mcp.request import MAX_SEED, build_request


def reject(expected: str, **arguments: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        build_request({"image": "https://example.com/a.png", **arguments})
    assert expected in str(caught.value), str(caught.value)
    return caught.value


def test_defaults_come_from_the_catalog_and_show_what_will_be_sent() -> None:
    request = build_request({"image": "https://example.com/a.png", "prompt": "a cat"})
    assert (request.model, request.resolution, request.duration) == ("wan2.2-i2v-flash", "720P", 5)
    assert request.prompt_extend is True and request.watermark is False
    assert request.payload("https://example.com/a.png") == {
        "model": "wan2.2-i2v-flash",
        "input": {"img_url": "https://example.com/a.png", "prompt": "a cat"},
        "parameters": {"resolution": "720P", "prompt_extend": True, "watermark": False},
    }
    assert request.estimated_cost_cny == 1.0


@pytest.mark.parametrize("spec", MODELS, ids=lambda m: m.name)
def test_every_model_accepts_its_own_values_and_rejects_others(spec: Any) -> None:
    for resolution in spec.resolutions:
        for duration in (spec.durations[0], spec.durations[-1]):
            request = build_request({"image": "x.png", "model": spec.name, "resolution": resolution,
                                     "duration": duration})  # fmt: skip
            assert request.resolution == resolution
            assert ("duration" in request.payload("u")["parameters"]) == (len(spec.durations) > 1)
    assert build_request({"image": "x.png", "model": spec.name}).resolution == spec.default_resolution
    error = reject("not supported by", model=spec.name, resolution="4K")
    assert error.argument == "resolution" and error.valid == list(spec.resolutions)
    reject("duration=99", model=spec.name, duration=99)
    reject("prompt=", model=spec.name, prompt="x" * (spec.max_prompt_chars + 1))
    assert build_request({"image": "x.png", "model": spec.name, "prompt": "x" * spec.max_prompt_chars})


def test_lowercase_resolution_is_normalised() -> None:
    assert build_request({"image": "x.png", "resolution": "480p"}).resolution == "480P"


def test_aliases_resolve_and_are_sent_in_the_region_spelling() -> None:
    assert get_model("wan2.1-i2v-turbo").name == "wanx2.1-i2v-turbo"
    request = build_request({"image": "x.png", "model": "wan2.1-i2v-turbo"})
    assert request.payload("u", region="singapore")["model"] == "wan2.1-i2v-turbo"
    assert request.payload("u", region="beijing")["model"] == "wanx2.1-i2v-turbo"


def test_unknown_model_lists_the_valid_ones() -> None:
    error = reject("unknown model", model="wan3-i2v")
    assert error.valid and "wan2.2-i2v-flash" in error.valid and "wan2.6-i2v" in error.valid


def test_templates() -> None:
    request = build_request({"image": "x.png", "model": "wanx2.1-i2v-plus", "template": "melt", "prompt": "hi"})
    assert request.payload("u")["input"] == {"img_url": "u", "template": "melt"}
    assert "prompt is ignored" in request.notes[0]
    reject("not supported by wanx2.1-i2v-turbo", model="wanx2.1-i2v-turbo", template="melt")
    reject(
        "wan2.2-i2v-plus does not take template; models that do: wanx2.1-i2v-plus, wanx2.1-i2v-turbo",
        model="wan2.2-i2v-plus",
        template="flying",
    )


def test_text_limits() -> None:
    reject("501 characters", negative_prompt="n" * 501)
    assert build_request({"image": "x.png", "negative_prompt": "n" * 500})
    assert build_request({"image": "x.png", "model": "wan2.5-i2v-preview", "prompt": "p" * 1500})
    reject("allows at most 1500", model="wan2.6-i2v", prompt="p" * 1501)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_seed_range(seed: int) -> None:
    reject(f"seed={seed}", seed=seed)


def test_seed_edges_are_sent() -> None:
    assert build_request({"image": "x.png", "seed": 0}).payload("u")["parameters"]["seed"] == 0
    assert build_request({"image": "x.png", "seed": MAX_SEED}).seed == MAX_SEED


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"seed": "abc"}, "seed='abc'"),
        ({"watermark": "maybe"}, "watermark='maybe'"),
        ({"prompt_extend": 3}, "prompt_extend=3"),
        ({"duration": 5.5}, "duration=5.5"),
        ({"colour": "red"}, "colour='red': unknown argument (valid: image, prompt, model, last_frame,"),
        ({"image": ""}, "image='': must not be empty"),
    ],
)
def test_wrong_types_and_unknown_arguments(arguments: dict[str, Any], expected: str) -> None:
    reject(expected, **arguments)


def test_audio_and_shot_type_only_where_supported() -> None:
    request = build_request({"image": "x.png", "model": "wan2.6-i2v-flash", "audio": False, "shot_type": "multi",
                             "audio_url": "https://example.com/a.mp3"})  # fmt: skip
    payload = request.payload("u")
    assert payload["parameters"]["audio"] is False and payload["parameters"]["shot_type"] == "multi"
    assert payload["input"]["audio_url"] == "https://example.com/a.mp3"
    reject("wan2.2-i2v-flash does not take audio_url; models that do: wan2.5", audio_url="https://example.com/a.mp3")
    reject("must be a public http(s) URL", model="wan2.5-i2v-preview", audio_url="file:///a.mp3")
    reject("does not take shot_type; models that do: wan2.6-i2v, wan2.6-i2v-flash", shot_type="single")
    reject("not supported by wan2.6-i2v", model="wan2.6-i2v", shot_type="triple")
    reject("needs prompt_extend", model="wan2.6-i2v", shot_type="multi", prompt_extend=False)
    reject("wan2.6-i2v does not take audio; models that do: wan2.6-i2v-flash", model="wan2.6-i2v", audio=False)


def test_wan26_notes_missing_actual_prompt() -> None:
    assert any("actual_prompt" in n for n in build_request({"image": "x.png", "model": "wan2.6-i2v"}).notes)
