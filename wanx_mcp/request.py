"""Generation arguments, checked against the chosen model's rules (``catalog``) before anything is sent."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .catalog import (
    DEFAULT_KF2V_MODEL,
    DEFAULT_MODEL,
    MAX_SEED,
    PARAMS,
    ModelSpec,
    Param,
    Rule,
    Scalar,
    choices_of,
    get_model,
    models_taking,
)
from .errors import SHOWN_CHARS, InvalidInput

__all__ = [
    "MAX_SEED",
    "GenerationArgs",
    "VideoRequest",
    "build_request",
    "check_known",
    "generation_args",
    "invalid_input",
    "shown",
]

#: Bidirectional-text controls, which can make a prompt read differently from what is sent.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ALLOWED_CONTROLS = frozenset("\t\n\r")


def generation_args() -> type[BaseModel]:
    """The arguments a caller may give, as a pydantic model of the catalog's ``PARAMS`` (others refused)."""
    fields: dict[str, Any] = {}
    for param in PARAMS.values():
        annotation: Any = param.type if param.required or param.default is not None else param.type | None
        listed = {"enum": choices_of(param.name)} if param.enum else None
        default = ... if param.required else param.default
        fields[param.name] = (annotation, Field(default, description=param.description, json_schema_extra=listed))
    return create_model("GenerationArgs", __config__=ConfigDict(extra="forbid"), **fields)


#: The generation arguments of the built-in catalog (for type hints and library callers).
GenerationArgs = generation_args()


class VideoRequest(BaseModel):
    """Arguments with every default filled from the catalog: exactly what will be sent.

    Arguments beyond the fields below (a catalog entry's own) are kept as extra fields.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    image: str
    model: str
    prompt: str | None = None
    negative_prompt: str | None = None
    template: str | None = None
    resolution: str
    duration: int
    prompt_extend: bool = True
    seed: int | None = None
    watermark: bool = False
    fit_image: bool = False
    last_frame: str | None = None
    audio_url: str | None = None
    shot_type: str | None = None
    audio: bool | None = None
    notes: tuple[str, ...] = ()

    @property
    def spec(self) -> ModelSpec:
        return get_model(self.model)

    @property
    def estimated_cost_cny(self) -> float | None:
        return self.spec.price(self.resolution, self.duration)

    @property
    def images(self) -> dict[str, str]:
        """The image arguments given, by name (``image``, ``last_frame``...): where each comes from."""
        values = self.model_dump()
        return {slot: values[slot] for slot in self.spec.inputs if values.get(slot)}

    def payload(self, images: str | Mapping[str, str], region: str = "beijing") -> dict[str, Any]:
        """The JSON body DashScope expects, with ``images`` prepared (just the first frame's, or by name)."""
        spec = self.spec
        prepared = {"image": images} if isinstance(images, str) else images
        body: dict[str, dict[str, Any]] = {
            "input": {spec.inputs[slot]: url for slot, url in prepared.items()},
            "parameters": {},
        }
        values = self.model_dump(exclude={"notes"})
        given = {name for name, value in values.items() if value is not None and value != ""}
        left_out = {other for name in given if name in PARAMS for other in PARAMS[name].replaces}
        for name, param in PARAMS.items():
            rule = spec.params.get(name)
            if param.target is None or rule is None or not rule.send or name not in given or name in left_out:
                continue
            section, field = param.target.split(".", 1)
            body[section][field] = values[name]
        return {"model": spec.name_in(region), **body}


def shown(value: Any) -> Any:
    """``value`` as an error may repeat it: a scalar as it is, anything else as a short excerpt of its repr."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def check_known(arguments: Mapping[str, Any], names: Iterable[str]) -> None:
    """InvalidInput naming the first argument not among ``names`` (a misspelling must not be dropped silently)."""
    valid = list(names)
    unknown = sorted(set(arguments) - set(valid))
    if unknown:
        raise InvalidInput(unknown[0], shown(arguments[unknown[0]]), "unknown argument", valid=valid)


def invalid_input(exc: ValidationError) -> InvalidInput:
    """The first error of a failed argument check, as an InvalidInput naming the argument."""
    error = exc.errors()[0]
    argument = ".".join(str(part) for part in error["loc"]) or "arguments"
    if error["type"] == "missing":
        return InvalidInput(argument, None, "is required")
    return InvalidInput(argument, shown(error.get("input")), error["msg"])


def _given(args: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the caller gave (not the defaults), type-checked; InvalidInput naming the first bad one."""
    raw = args.model_dump(exclude_unset=True) if isinstance(args, BaseModel) else dict(args)
    model = generation_args()
    check_known(raw, model.model_fields)
    try:
        checked = model.model_validate(raw)
    except ValidationError as exc:
        raise invalid_input(exc) from None
    return {name: getattr(checked, name) for name in checked.model_fields_set}


def _check_text(name: str, value: str, rule: Rule, spec: ModelSpec) -> None:
    for char in value:
        if char in BIDI_CONTROLS or (unicodedata.category(char) in ("Cc", "Cs") and char not in ALLOWED_CONTROLS):
            raise InvalidInput(name, value, f"contains the control character U+{ord(char):04X}; remove it")
    if rule.max_chars is not None and len(value) > rule.max_chars:
        raise InvalidInput(name, value, f"is {len(value)} characters; {spec.name} allows at most {rule.max_chars}")


def _checked(name: str, param: Param, rule: Rule, value: Scalar, spec: ModelSpec) -> Scalar:
    """``value`` as it will be sent, after ``rule`` and ``param``'s own checks."""
    if rule.choices:
        canonical = {str(c).upper(): c for c in rule.choices}
        found = canonical.get(value.upper()) if isinstance(value, str) else value if value in rule.choices else None
        if found is None:
            others = ", ".join(m for m in models_taking(name, value) if m != spec.name)
            text = f"not supported by {spec.name}" + (f"; models that take it: {others}" if others else "")
            raise InvalidInput(name, value, text, valid=rule.choices)
        value = found
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = rule.minimum, rule.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidInput(name, value, f"must be between {low} and {high}")
    if isinstance(value, str):
        if param.image and not value.strip():
            raise InvalidInput(name, value, "must not be empty")
        if param.text:
            _check_text(name, value, rule, spec)
        if param.url and not value.lower().startswith(("http://", "https://")):
            raise InvalidInput(name, value, "must be a public http(s) URL")
    return value


def build_request(args: BaseModel | Mapping[str, Any]) -> VideoRequest:
    """Check ``args`` against every documented rule of the chosen model; raise InvalidInput on the first break.

    Without a ``model``, a ``last_frame`` makes the first-and-last-frame default model the choice.
    """
    given = {name: value for name, value in _given(args).items() if value is not None}
    spec = get_model(given.get("model") or (DEFAULT_KF2V_MODEL if "last_frame" in given else DEFAULT_MODEL))
    for name, value in given.items():
        if not spec.takes(name):
            others = ", ".join(models_taking(name))
            raise InvalidInput(name, value, f"{spec.name} does not take {name}; models that do: {others}")
    values: dict[str, Any] = {}
    for name, param in PARAMS.items():
        if not spec.takes(name):
            continue
        rule = spec.params.get(name, Rule())
        value = given.get(name, rule.default if rule.default is not None else param.default)
        if value is not None:
            values[name] = _checked(name, param, rule, value, spec)
    notes: list[str] = []
    for name, value in values.items():
        rule = spec.params.get(name, Rule())
        for other, wanted in rule.needs.get(str(value), {}).items():
            if values.get(other) != wanted:
                raise InvalidInput(name, value, f"{value!r} needs {other}={str(wanted).lower()}")
        for other in rule.excludes:
            if other in given:
                raise InvalidInput(other, given[other], f"cannot be combined with {name} on {spec.name}")
        if name in given:
            notes += [f"{other} is ignored because a {name} is set" for other in PARAMS[name].replaces
                      if other in given]  # fmt: skip
    if values.get("prompt_extend") and not spec.returns_actual_prompt:
        notes.append(f"{spec.name} does not return actual_prompt")
    return VideoRequest(**values | {"model": spec.name, "notes": tuple(notes)})
