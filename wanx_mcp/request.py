"""Generation arguments, checked against the chosen model before anything is sent."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .catalog import DEFAULT_MODEL, MODELS, ModelSpec, get_model
from .errors import InvalidInput

MAX_SEED = 2_147_483_647


def _model_summary() -> str:
    """One line per model for the ``model`` argument's description: resolutions, seconds, price per second."""

    def describe(m: ModelSpec) -> str:
        seconds = f"{m.durations[0]}-{m.durations[-1]} s" if m.sends_duration else f"{m.durations[0]} s"
        prices = "/".join(f"{p:g}" if p is not None else "?" for p in m.price_cny_per_second.values())
        return f"{m.name} ({'/'.join(m.resolutions)}, {seconds}, {prices} CNY/s in Beijing)"

    return "; ".join(describe(m) for m in MODELS)


class GenerationArgs(BaseModel):
    """What a caller may ask for; the shape shared by the CLI, the library and the MCP tools."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        description=(
            "First frame: a public http(s) URL, a data: URI, a local file path or a file:// URI. "
            "JPEG, PNG (no transparency), BMP or WEBP; 240-8000 px per side; at most 10 MB (20 MB on 2.5/2.6)."
        )
    )
    prompt: str | None = Field(
        None,
        description="What should happen in the video: subject motion, camera movement, style. "
        "At most 800 characters (1500 on wan2.5/2.6). Ignored when a template is set.",
    )
    model: str = Field(DEFAULT_MODEL, description=f"Model name. Choices: {_model_summary()}.")
    negative_prompt: str | None = Field(None, description="What to avoid. At most 500 characters.")
    template: str | None = Field(
        None, description="Effect template (wanx2.1 models only, e.g. 'flying', 'hug', 'squish'); replaces the prompt."
    )
    resolution: str | None = Field(None, description="Video resolution such as 480P, 720P or 1080P; default per model.")
    duration: int | None = Field(None, description="Video length in seconds; default per model (usually 5).")
    prompt_extend: bool = Field(True, description="Let DashScope rewrite the prompt with more detail.")
    seed: int | None = Field(None, description=f"Random seed, 0-{MAX_SEED}, for repeatable results.")
    watermark: bool = Field(False, description="Add the 'AI generated' watermark.")
    fit_image: bool = Field(
        False,
        description="Resize/flatten/re-encode an image that breaks the model's limits instead of rejecting it.",
    )
    audio_url: str | None = Field(None, description="wan2.5/2.6 only: http(s) URL of a wav/mp3 soundtrack (3-30 s).")
    shot_type: str | None = Field(None, description="wan2.6 only: 'single' or 'multi' (multi needs prompt_extend).")
    audio: bool | None = Field(None, description="wan2.6-i2v-flash only: false for a silent video.")


class VideoRequest(BaseModel):
    """Arguments with every default filled from the catalog: exactly what will be sent."""

    model_config = ConfigDict(frozen=True)

    image: str
    model: str
    prompt: str | None
    negative_prompt: str | None
    template: str | None
    resolution: str
    duration: int
    prompt_extend: bool
    seed: int | None
    watermark: bool
    fit_image: bool
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

    def payload(self, img_url: str, region: str = "beijing") -> dict[str, Any]:
        """The JSON body DashScope expects, with ``img_url`` as the prepared image."""
        spec = self.spec
        inputs: dict[str, Any] = {"img_url": img_url}
        if self.template:
            inputs["template"] = self.template
        elif self.prompt:
            inputs["prompt"] = self.prompt
        if self.negative_prompt:
            inputs["negative_prompt"] = self.negative_prompt
        if self.audio_url:
            inputs["audio_url"] = self.audio_url
        parameters: dict[str, Any] = {
            "resolution": self.resolution,
            "prompt_extend": self.prompt_extend,
            "watermark": self.watermark,
        }
        if spec.sends_duration:
            parameters["duration"] = self.duration
        if self.seed is not None:
            parameters["seed"] = self.seed
        if self.shot_type:
            parameters["shot_type"] = self.shot_type
        if self.audio is not None:
            parameters["audio"] = self.audio
        return {"model": spec.name_in(region), "input": inputs, "parameters": parameters}


def _check_text(argument: str, value: str | None, limit: int, model: str) -> None:
    if value is not None and len(value) > limit:
        raise InvalidInput(argument, value, f"is {len(value)} characters; {model} allows at most {limit}")


def _check_choice(argument: str, value: Any, choices: tuple[Any, ...], model: str) -> None:
    if value not in choices:
        raise InvalidInput(argument, value, f"not supported by {model}", valid=choices)


def build_request(args: GenerationArgs | dict[str, Any]) -> VideoRequest:
    """Check ``args`` against every documented rule of the chosen model; raise InvalidInput on the first break."""
    if isinstance(args, dict):
        try:
            args = GenerationArgs.model_validate(args)
        except ValidationError as exc:
            error = exc.errors()[0]
            argument = ".".join(str(p) for p in error["loc"]) or "arguments"
            raise InvalidInput(argument, error.get("input"), error["msg"]) from None
    spec = get_model(args.model)
    notes: list[str] = []
    if not args.image.strip():
        raise InvalidInput("image", args.image, "must not be empty")
    resolution = args.resolution.upper() if args.resolution else spec.default_resolution
    _check_choice("resolution", resolution, spec.resolutions, spec.name)
    duration = spec.default_duration if args.duration is None else args.duration
    _check_choice("duration", duration, spec.durations, spec.name)
    if args.template is not None:
        if not spec.templates:
            raise InvalidInput("template", args.template, f"{spec.name} has no effect templates",
                               valid=[m.name for m in MODELS if m.templates])  # fmt: skip
        _check_choice("template", args.template, spec.templates, spec.name)
        if args.prompt:
            notes.append("prompt is ignored because a template is set")
    _check_text("prompt", args.prompt, spec.max_prompt_chars, spec.name)
    _check_text("negative_prompt", args.negative_prompt, spec.max_negative_prompt_chars, spec.name)
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise InvalidInput("seed", args.seed, f"must be between 0 and {MAX_SEED}")
    if args.audio_url is not None:
        if not spec.supports_audio_url:
            raise InvalidInput("audio_url", args.audio_url, f"{spec.name} does not take a soundtrack",
                               valid=[m.name for m in MODELS if m.supports_audio_url])  # fmt: skip
        if not args.audio_url.lower().startswith(("http://", "https://")):
            raise InvalidInput("audio_url", args.audio_url, "must be a public http(s) URL of a wav or mp3 file")
    if args.shot_type is not None:
        if not spec.shot_types:
            raise InvalidInput("shot_type", args.shot_type, f"{spec.name} has no shot types",
                               valid=[m.name for m in MODELS if m.shot_types])  # fmt: skip
        _check_choice("shot_type", args.shot_type, spec.shot_types, spec.name)
        if args.shot_type == "multi" and not args.prompt_extend:
            raise InvalidInput("shot_type", args.shot_type, "'multi' needs prompt_extend=true")
    if args.audio is not None and not spec.supports_audio_toggle:
        raise InvalidInput("audio", args.audio, f"{spec.name} has no audio switch",
                           valid=[m.name for m in MODELS if m.supports_audio_toggle])  # fmt: skip
    if args.prompt_extend and not spec.returns_actual_prompt:
        notes.append(f"{spec.name} does not return actual_prompt")
    return VideoRequest(
        image=args.image,
        model=spec.name,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        template=args.template,
        resolution=resolution,
        duration=duration,
        prompt_extend=args.prompt_extend,
        seed=args.seed,
        watermark=args.watermark,
        fit_image=args.fit_image,
        audio_url=args.audio_url,
        shot_type=args.shot_type,
        audio=args.audio,
        notes=tuple(notes),
    )
