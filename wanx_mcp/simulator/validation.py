"""Checks a create request the way DashScope does, from the simulator's own rule table (rules.py).

Image data URIs are checked for base64, byte size and format; not for their pixel size, which the docs
changed between versions (360-2000 px in 2025, 240-8000 px in 2026: the client checks it). Fields that
DashScope does not document are accepted silently, as it does (unverified); the task records
which fields arrived (``TaskSpec.input_fields``, ``TaskSpec.parameters``) so tests can assert what was sent.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import invalid
from .rules import ENDPOINT_NAMES, MAX_SEED, ModelRule, find_rule

MARKER = re.compile(r"\[simulate:([A-Za-z0-9_.\-]+)\]")
IMAGE_URL_PREFIXES = ("http://", "https://", "oss://", "data:image/")
AUDIO_URL_PREFIXES = ("http://", "https://", "oss://")
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")


@dataclass(frozen=True)
class TaskSpec:
    """A validated request: what the task will be, and what was sent."""

    rule: ModelRule
    model_name: str
    prompt: str
    template: str | None
    resolution: str
    duration: int
    prompt_extend: bool
    marker_code: str | None
    images: dict[str, str] = field(default_factory=dict)
    input_fields: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)


def _text(container: dict[str, Any], name: str, where: str, limit: int) -> str:
    value = container.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(f"The parameter {where}.{name} must be a string.")
    if len(value) > limit:
        raise invalid(f"The length of {where}.{name} is {len(value)}; it must not exceed {limit} characters.")
    return value


def data_uri_bytes(url: str) -> bytes | None:
    """The bytes of a ``data:...;base64,`` URI, None for any other URL; ValueError if not base64."""
    if not url.lower().startswith("data:"):
        return None
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise ValueError("not a base64 data URI")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None


def _image(inputs: dict[str, Any], name: str, rule: ModelRule) -> str:
    url = inputs[name]
    where = f"input.{name}"
    if not isinstance(url, str) or not url:
        raise invalid(f"Field required: {where}")
    if not url.lower().startswith(IMAGE_URL_PREFIXES):
        raise invalid(
            f"url error, please check url! {where} must be an http(s) URL, an oss:// URL "
            "or a data:image/...;base64 URI."
        )
    try:
        data = data_uri_bytes(url)
    except ValueError:
        raise invalid(f"url error, please check url! {where} is not a valid base64 data URI.") from None
    if data is None:
        return url
    if len(data) > rule.max_image_bytes:
        raise invalid(f"The image of {where} is {len(data)} bytes; {rule.name} accepts at most {rule.max_image_bytes}.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError):
        return url  # undecodable images are not refused here (unverified); the video shows a placeholder
    if fmt not in IMAGE_FORMATS:
        raise invalid(f"The image format of {where} is {fmt}; supported: {', '.join(IMAGE_FORMATS)}.")
    return url


def _choice(parameters: dict[str, Any], name: str, rule: ModelRule, allowed: tuple[Any, ...]) -> None:
    value = parameters.get(name)
    if value is None:
        return
    if not allowed:
        raise invalid(f"Model {rule.name} does not support parameters.{name}.")
    if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
        raise invalid(
            f"The parameter {name} {value!r} is invalid for {rule.name}; supported: {', '.join(map(str, allowed))}."
        )


def validate_create(body: Any, endpoint: str) -> TaskSpec:
    """The task ``body`` posted to ``endpoint`` asks for, or ApiError(400 InvalidParameter) naming the first
    broken rule."""
    if not isinstance(body, dict):
        raise invalid("Required body invalid, please check the request body format.")
    model_name = body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise invalid("Field required: model")
    rule = find_rule(model_name)
    if rule is None:
        raise invalid("Model not exist.")
    if rule.endpoint != endpoint:
        raise invalid(
            f"Model {model_name} is not supported on this endpoint; it needs the "
            f"{ENDPOINT_NAMES[rule.endpoint]} endpoint POST /api/v1{rule.endpoint}."
        )
    inputs = body.get("input")
    parameters = body.get("parameters") or {}
    if not isinstance(inputs, dict):
        raise invalid("Field required: input")
    if not isinstance(parameters, dict):
        raise invalid("The parameter parameters must be an object.")
    images = {}
    for slot in rule.images:
        if inputs.get(slot.name) is not None:
            images[slot.name] = _image(inputs, slot.name, rule)
        elif slot.required:
            raise invalid(f"Field required: input.{slot.name}")
    prompt = _text(inputs, "prompt", "input", rule.max_prompt_chars)
    _text(inputs, "negative_prompt", "input", rule.max_negative_prompt_chars)
    template = inputs.get("template")
    if template is not None:
        if not rule.templates:
            raise invalid(f"Model {rule.name} does not support input.template.")
        if template not in rule.templates:
            raise invalid(
                f"The template {template!r} is not supported by {rule.name}; supported: {', '.join(rule.templates)}."
            )
        if "last_frame_url" in images:
            raise invalid(f"The template {template!r} uses the first frame only; do not send input.last_frame_url.")
    audio_url = inputs.get("audio_url")
    if audio_url is not None:
        if not rule.audio_url:
            raise invalid(f"Model {rule.name} does not support input.audio_url.")
        if not isinstance(audio_url, str) or not audio_url.lower().startswith(AUDIO_URL_PREFIXES):
            raise invalid("url error, please check url! input.audio_url must be an http(s) or oss:// URL.")
    resolution = parameters.get("resolution", rule.default_resolution)
    if not isinstance(resolution, str) or resolution.upper() not in rule.resolutions:
        raise invalid(
            f"The parameter resolution {resolution!r} is invalid for {rule.name}; "
            f"supported: {', '.join(rule.resolutions)}."
        )
    duration = parameters.get("duration")
    if duration is not None and not rule.duration_may_be_sent:
        raise invalid(f"Model {rule.name} does not take parameters.duration: its videos are {rule.durations[0]} s.")
    if duration is None:
        duration = rule.default_duration
    elif isinstance(duration, bool) or type(duration) is not int or duration not in rule.durations:
        raise invalid(
            f"The parameter duration {duration!r} is invalid for {rule.name}; "
            f"supported: {', '.join(map(str, rule.durations))}."
        )
    seed = parameters.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise invalid(f"The parameter seed must be an integer in [0, {MAX_SEED}].")
    prompt_extend = parameters.get("prompt_extend", True)
    for flag in ("prompt_extend", "watermark", "audio"):
        if parameters.get(flag) is not None and not isinstance(parameters[flag], bool):
            raise invalid(f"The parameter {flag} must be a boolean.")
    _choice(parameters, "audio", rule, (True, False) if rule.audio_toggle else ())
    _choice(parameters, "shot_type", rule, rule.shot_types)
    if parameters.get("shot_type") == "multi" and not prompt_extend:
        raise invalid("The parameter shot_type 'multi' requires prompt_extend to be true.")
    marker = MARKER.search(prompt)
    return TaskSpec(
        rule=rule,
        model_name=model_name,
        prompt=prompt,
        template=template,
        resolution=resolution.upper(),
        duration=duration,
        prompt_extend=prompt_extend,
        marker_code=marker.group(1) if marker else None,
        images=images,
        input_fields=tuple(sorted(inputs)),
        parameters=dict(parameters),
    )
