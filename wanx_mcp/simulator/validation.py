"""Checks a create request the way DashScope does, using the catalog's rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..catalog import ModelSpec, get_model
from ..errors import InvalidInput
from ..request import MAX_SEED
from .errors import invalid

MARKER = re.compile(r"\[simulate:([A-Za-z0-9_.\-]+)\]")
IMAGE_URL_PREFIXES = ("http://", "https://", "oss://", "data:image/")


@dataclass(frozen=True)
class TaskSpec:
    """A validated request: what the task will be."""

    spec: ModelSpec
    model_name: str
    prompt: str
    template: str | None
    resolution: str
    duration: int
    prompt_extend: bool
    marker_code: str | None


def _text(container: dict[str, Any], name: str, where: str, limit: int) -> str:
    value = container.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(f"The parameter {where}.{name} must be a string.")
    if len(value) > limit:
        raise invalid(f"The length of {where}.{name} is {len(value)}; it must not exceed {limit} characters.")
    return value


def validate_create(body: Any) -> TaskSpec:
    """The task ``body`` asks for, or ApiError(400 InvalidParameter) naming the first broken rule."""
    if not isinstance(body, dict):
        raise invalid("Required body invalid, please check the request body format.")
    model_name = body.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise invalid("Field required: model")
    try:
        spec = get_model(model_name)
    except InvalidInput:
        raise invalid("Model not exist.") from None
    inputs = body.get("input")
    parameters = body.get("parameters") or {}
    if not isinstance(inputs, dict):
        raise invalid("Field required: input")
    if not isinstance(parameters, dict):
        raise invalid("The parameter parameters must be an object.")
    img_url = inputs.get("img_url")
    if not isinstance(img_url, str) or not img_url:
        raise invalid("Field required: input.img_url")
    if not img_url.lower().startswith(IMAGE_URL_PREFIXES):
        raise invalid(
            "url error, please check url! input.img_url must be an http(s) URL, an oss:// URL "
            "or a data:image/...;base64 URI."
        )
    prompt = _text(inputs, "prompt", "input", spec.max_prompt_chars)
    _text(inputs, "negative_prompt", "input", spec.max_negative_prompt_chars)
    template = inputs.get("template")
    if template is not None:
        if not spec.templates:
            raise invalid(f"Model {spec.name} does not support input.template.")
        if template not in spec.templates:
            raise invalid(
                f"The template {template!r} is not supported by {spec.name}; "
                f"supported: {', '.join(spec.templates)}."
            )
    resolution = parameters.get("resolution", spec.default_resolution)
    if not isinstance(resolution, str) or resolution.upper() not in spec.resolutions:
        raise invalid(
            f"The parameter resolution {resolution!r} is invalid for {spec.name}; "
            f"supported: {', '.join(spec.resolutions)}."
        )
    duration = parameters.get("duration", spec.default_duration)
    if isinstance(duration, bool) or duration not in spec.durations:
        raise invalid(
            f"The parameter duration {duration!r} is invalid for {spec.name}; "
            f"supported: {', '.join(map(str, spec.durations))}."
        )
    seed = parameters.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise invalid(f"The parameter seed must be an integer in [0, {MAX_SEED}].")
    prompt_extend = parameters.get("prompt_extend", True)
    if not isinstance(prompt_extend, bool):
        raise invalid("The parameter prompt_extend must be a boolean.")
    marker = MARKER.search(prompt)
    return TaskSpec(
        spec=spec,
        model_name=model_name,
        prompt=prompt,
        template=template,
        resolution=resolution.upper(),
        duration=int(duration),
        prompt_extend=prompt_extend,
        marker_code=marker.group(1) if marker else None,
    )
