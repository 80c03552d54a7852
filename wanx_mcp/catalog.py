"""The Wan image-to-video models as data: adding a model is one entry in ``MODELS``; adding an argument is one
``Param`` in ``PARAMS`` plus a ``Rule`` in the models that take it. Validation (``request``), the DashScope body,
the MCP tools' arguments, the CLI's flags, ``list_models``, the README's table and the cost estimate follow.

Figures come from ``shared/dashscope-wan-i2v.md`` (Alibaba Cloud Model Studio docs, 2026).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput

REGIONS = ("beijing", "singapore", "virginia")

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")


class ImageLimits(BaseModel):
    """What DashScope accepts as the first frame."""

    model_config = ConfigDict(frozen=True)

    formats: tuple[str, ...] = IMAGE_FORMATS
    min_side: int = Field(240, description="smallest allowed width and height in pixels")
    max_side: int = Field(8000, description="largest allowed width and height in pixels")
    max_bytes: int = Field(10 * 1024 * 1024, description="largest allowed file size in bytes")


class RateLimit(BaseModel):
    """Per-account limits shared by every model of one family."""

    model_config = ConfigDict(frozen=True)

    family: str
    submissions_per_second: int
    running_tasks: int


WAN_21_22 = RateLimit(family="wan2.1/2.2", submissions_per_second=2, running_tasks=2)
WAN_25_26 = RateLimit(family="wan2.5/2.6", submissions_per_second=5, running_tasks=5)

TEMPLATES_21 = (
    "squish", "rotation", "poke", "inflate", "dissolve", "carousel", "singleheart",
    "flying", "rose", "crystalrose", "hug", "frenchkiss", "coupleheart",
)  # fmt: skip
TEMPLATES_21_PLUS_ONLY = (
    "melt", "icecream", "dance1", "dance2", "dance3", "dance4", "dance5",
    "mermaid", "graduation", "dragon", "money", "jellyfish", "pupil",
)  # fmt: skip
TEMPLATES_KF2V = ("hanfu-1", "solaron", "magazine", "mech1", "mech2")


MAX_SEED = 2_147_483_647
DEFAULT_MODEL = "wan2.2-i2v-flash"
DEFAULT_KF2V_MODEL = "wan2.2-kf2v-flash"

I2V_PATH = "services/aigc/video-generation/video-synthesis"
KF2V_PATH = "services/aigc/image2video/video-synthesis"

Scalar = str | int | bool


class Param(BaseModel):
    """A generation argument: its type, where DashScope takes it, and its one-line description."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: type[str] | type[int] | type[bool]
    description: str | None = None
    target: str | None = Field(None, description="'input.x' or 'parameters.x' in the create body; None: local")
    default: Scalar | None = Field(None, description="the value when not given (None: left out)")
    required: bool = False
    image: bool = Field(False, description="an image slot: same forms and checks as the first frame")
    text: bool = Field(False, description="free text: control characters refused, length per model")
    url: bool = Field(False, description="must be a public http(s) URL")
    replaces: tuple[str, ...] = Field((), description="arguments left out of the body when this one is set")
    enum: bool = Field(False, description="the schema lists every model's choices")


class Rule(BaseModel):
    """How one model takes one argument; an argument without a rule is refused for that model."""

    model_config = ConfigDict(frozen=True)

    choices: tuple[Scalar, ...] = Field((), description="the allowed values (empty: any)")
    default: Scalar | None = Field(None, description="this model's default, over the argument's own")
    max_chars: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    send: bool = Field(True, description="False: checked, never sent (duration where there is one choice)")
    needs: dict[str, dict[str, Scalar]] = Field(
        default_factory=dict, description="value -> other arguments and the values that value needs"
    )
    excludes: tuple[str, ...] = Field((), description="arguments that may not be given with this one")


#: Every generation argument, in the order tools and the CLI show them.
PARAMS: dict[str, Param] = {p.name: p for p in (
    Param(name="image", type=str, required=True, image=True,
          description="First frame: http(s) URL, data: URI, local path or file:// URI"),
    Param(name="prompt", type=str, target="input.prompt", text=True, description="Motion, camera, style"),
    Param(name="model", type=str, default=DEFAULT_MODEL,
          description=f"See list_models; {DEFAULT_MODEL}, or {DEFAULT_KF2V_MODEL} with last_frame"),
    Param(name="last_frame", type=str, image=True, description="Last frame, same forms as image (kf2v models)"),
    Param(name="negative_prompt", type=str, target="input.negative_prompt", text=True, description="What to avoid"),
    Param(name="template", type=str, target="input.template", replaces=("prompt",),
          description="Effect template (wanx2.1 models); replaces prompt"),
    Param(name="resolution", type=str, target="parameters.resolution", enum=True),
    Param(name="duration", type=int, target="parameters.duration", description="Seconds"),
    Param(name="prompt_extend", type=bool, target="parameters.prompt_extend", default=True,
          description="Let DashScope enrich the prompt"),
    Param(name="seed", type=int, target="parameters.seed", description="For repeatable results"),
    Param(name="watermark", type=bool, target="parameters.watermark", default=False, description="Add the AI mark"),
    Param(name="fit_image", type=bool, default=False,
          description="Resize/flatten/re-encode an image that breaks the limits instead of refusing it"),
    Param(name="audio_url", type=str, target="input.audio_url", url=True,
          description="wav/mp3 soundtrack URL, 3-30 s (wan2.5/2.6)"),
    Param(name="audio", type=bool, target="parameters.audio", description="false: silent (wan2.6-i2v-flash)"),
    Param(name="shot_type", type=str, target="parameters.shot_type", enum=True,
          description="wan2.6; multi needs prompt_extend"),
)}  # fmt: skip

#: Arguments every model takes the same way (no per-model rule needed).
LOCAL_PARAMS = ("image", "model", "fit_image")


def rules(
    resolutions: tuple[str, ...],
    default_resolution: str,
    durations: tuple[int, ...] = (5,),
    *,
    prompt_chars: int = 800,
    **extra: Rule,
) -> dict[str, Rule]:
    """The rules every Wan model shares, for these resolutions and durations, plus ``extra``."""
    return {
        "prompt": Rule(max_chars=prompt_chars),
        "negative_prompt": Rule(max_chars=500),
        "resolution": Rule(choices=resolutions, default=default_resolution),
        "duration": Rule(choices=durations, default=5, send=len(durations) > 1),
        "prompt_extend": Rule(),
        "seed": Rule(minimum=0, maximum=MAX_SEED),
        "watermark": Rule(),
    } | extra


class ModelSpec(BaseModel):
    """Everything wanx-mcp knows about one model."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    endpoint: str = Field(I2V_PATH, description="the create path under the API base")
    inputs: dict[str, str] = Field(
        default_factory=lambda: {"image": "img_url"}, description="image argument -> field of the body's input"
    )
    params: dict[str, Rule] = Field(description="the arguments this model takes, with its rules")
    image: ImageLimits = ImageLimits()
    rate_limit: RateLimit
    price_cny_per_second: dict[str, float | None] = Field(
        description="Beijing price per second of video, by resolution (None: not published)"
    )
    regions: tuple[str, ...] = ("beijing", "singapore")
    aliases: dict[str, str] = Field(default_factory=dict, description="region -> the name used there")
    recommended: bool = False
    returns_actual_prompt: bool = True
    typical_seconds: float = Field(description="typical generation time of the default video, in seconds")

    def name_in(self, region: str) -> str:
        """The spelling this model has in ``region``."""
        return self.aliases.get(region, self.name)

    def price(self, resolution: str, duration: int) -> float | None:
        per_second = self.price_cny_per_second.get(resolution)
        return None if per_second is None else round(per_second * duration, 4)

    def takes(self, argument: str) -> bool:
        return argument in LOCAL_PARAMS or argument in self.params or argument in self.inputs

    def choices(self, argument: str) -> tuple[Scalar, ...]:
        rule = self.params.get(argument)
        return rule.choices if rule else ()

    @property
    def resolutions(self) -> tuple[str, ...]:
        return tuple(map(str, self.choices("resolution")))

    @property
    def default_resolution(self) -> str:
        return str(self.params["resolution"].default)

    @property
    def durations(self) -> tuple[int, ...]:
        return tuple(map(int, self.choices("duration")))

    @property
    def default_duration(self) -> int:
        return int(self.params["duration"].default or self.durations[0])

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(map(str, self.choices("template")))

    @property
    def max_prompt_chars(self) -> int:
        return self.params["prompt"].max_chars or 0

    @property
    def max_negative_prompt_chars(self) -> int:
        return self.params["negative_prompt"].max_chars or 0

    @property
    def sends_duration(self) -> bool:
        """DashScope takes ``duration`` only where the model offers more than one."""
        return self.params["duration"].send


LARGE_IMAGES = ImageLimits(max_bytes=20 * 1024 * 1024)
WAN26_RESOLUTIONS, WAN26_DURATIONS = ("720P", "1080P"), tuple(range(2, 16))
SHOTS = Rule(choices=("single", "multi"), needs={"multi": {"prompt_extend": True}})

MODELS: list[ModelSpec] = [
    ModelSpec(
        name="wan2.2-i2v-flash",
        description="Wan 2.2 flash: fast and cheap, good quality; the default.",
        params=rules(("480P", "720P", "1080P"), "720P"),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.10, "720P": 0.20, "1080P": 0.48},
        recommended=True,
        typical_seconds=60,
    ),
    ModelSpec(
        name="wan2.2-i2v-plus",
        description="Wan 2.2 plus: best 2.2 quality, camera control; slower.",
        params=rules(("480P", "1080P"), "1080P"),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.14, "1080P": 0.70},
        recommended=True,
        typical_seconds=210,
    ),
    ModelSpec(
        name="wanx2.1-i2v-plus",
        description="Wan 2.1 plus: 720P, with the full set of effect templates.",
        params=rules(("720P",), "720P", template=Rule(choices=TEMPLATES_21 + TEMPLATES_21_PLUS_ONLY)),
        rate_limit=WAN_21_22,
        price_cny_per_second={"720P": 0.70},
        aliases={"singapore": "wan2.1-i2v-plus"},
        typical_seconds=240,
    ),
    ModelSpec(
        name="wanx2.1-i2v-turbo",
        description="Wan 2.1 turbo: about three times faster than plus; 3-5 s clips; effect templates.",
        params=rules(("480P", "720P"), "720P", (3, 4, 5), template=Rule(choices=TEMPLATES_21)),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.24, "720P": 0.24},
        aliases={"singapore": "wan2.1-i2v-turbo"},
        typical_seconds=80,
    ),
    ModelSpec(
        name="wan2.2-kf2v-flash",
        description="Wan 2.2 first-and-last-frame flash: a 5 s video from a first and a last frame.",
        endpoint=KF2V_PATH,
        inputs={"image": "first_frame_url", "last_frame": "last_frame_url"},
        params=rules(("480P", "720P", "1080P"), "720P"),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": None, "720P": None, "1080P": None},
        typical_seconds=60,
    ),
    ModelSpec(
        name="wanx2.1-kf2v-plus",
        description="Wan 2.1 first-and-last-frame plus: 720P, with its own effect templates (first frame only).",
        endpoint=KF2V_PATH,
        inputs={"image": "first_frame_url", "last_frame": "last_frame_url"},
        params=rules(("720P",), "720P", template=Rule(choices=TEMPLATES_KF2V, excludes=("last_frame",))),
        rate_limit=WAN_21_22,
        price_cny_per_second={"720P": None},
        typical_seconds=240,
    ),
    ModelSpec(
        name="wan2.5-i2v-preview",
        description="Wan 2.5 preview: 5 or 10 s with sound (auto-dubbed or from audio_url).",
        params=rules(("480P", "720P", "1080P"), "1080P", (5, 10), prompt_chars=1500, audio_url=Rule()),
        image=LARGE_IMAGES,
        rate_limit=WAN_25_26,
        price_cny_per_second={"480P": 0.3, "720P": 0.6, "1080P": 1.0},
        typical_seconds=300,
    ),
    ModelSpec(
        name="wan2.6-i2v",
        description="Wan 2.6: 2-15 s with sound, single- or multi-shot.",
        params=rules(WAN26_RESOLUTIONS, "1080P", WAN26_DURATIONS, prompt_chars=1500, audio_url=Rule(), shot_type=SHOTS),
        image=LARGE_IMAGES,
        rate_limit=WAN_25_26,
        price_cny_per_second={"720P": 0.6, "1080P": 1.0},
        returns_actual_prompt=False,
        typical_seconds=300,
    ),
    ModelSpec(
        name="wan2.6-i2v-flash",
        description="Wan 2.6 flash: faster 2.6, 2-15 s, sound on or off.",
        params=rules(
            WAN26_RESOLUTIONS,
            "1080P",
            WAN26_DURATIONS,
            prompt_chars=1500,
            audio_url=Rule(),
            shot_type=SHOTS,
            audio=Rule(),
        ),
        image=LARGE_IMAGES,
        rate_limit=WAN_25_26,
        price_cny_per_second={"720P": None, "1080P": None},
        returns_actual_prompt=False,
        typical_seconds=120,
    ),
]


def get_model(name: str) -> ModelSpec:
    """The model called ``name`` (in any region's spelling), or InvalidInput listing the valid names."""
    for spec in MODELS:
        if name == spec.name or name in spec.aliases.values():
            return spec
    raise InvalidInput("model", name, "unknown model", valid=[m.name for m in MODELS])


def budget_price(spec: ModelSpec, resolution: str, duration: int) -> tuple[float, bool]:
    """What a video counts against ``WANX_BUDGET_CNY``: its price (:meth:`ModelSpec.price`) or, where that is
    unpublished, the highest published price of a video of that resolution and duration (True: so counted)."""
    price = spec.price(resolution, duration)
    if price is not None:
        return price, False
    published = [p for m in MODELS if (p := m.price(resolution, duration)) is not None]
    published = published or [p for m in MODELS for r in m.resolutions if (p := m.price(r, duration)) is not None]
    return max(published, default=0.0), True


def models_taking(argument: str, value: Scalar | None = None) -> list[str]:
    """The models that take ``argument`` (with ``value`` among its choices, when given)."""
    return [
        m.name for m in MODELS if m.takes(argument) and (value is None or value in (m.choices(argument) or (value,)))
    ]


def choices_of(argument: str) -> list[Scalar]:
    """Every model's choices for ``argument``, in catalog order."""
    return list(dict.fromkeys(c for m in MODELS for c in m.choices(argument)))


def model_table() -> str:
    """The README's model table (Markdown), one row per model."""
    common = set(rules(("",), ""))
    lines = ["| model | resolutions (default) | seconds | CNY/s (Beijing) | arguments of its own | notes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for m in MODELS:
        d = m.durations
        seconds = f"{d[0]}-{d[-1]}" if len(d) > 2 and d == tuple(range(d[0], d[-1] + 1)) else ", ".join(map(str, d))
        prices = [m.price_cny_per_second.get(r) for r in m.resolutions]
        price = " / ".join(f"{p:g}" if p is not None else "?" for p in prices) if any(prices) else "unpublished"
        own = ", ".join(f"`{a}`" for a in [*m.inputs, *m.params] if a != "image" and a not in common) or "—"
        lines.append(f"| `{m.name}` | {', '.join(m.resolutions)} ({m.default_resolution}) | {seconds} | {price} "
                     f"| {own} | {m.description} |")  # fmt: skip
    return "\n".join(lines)


def rate_limits() -> dict[str, RateLimit]:
    """The rate-limit families, by name."""
    return {m.rate_limit.family: m.rate_limit for m in MODELS}


@contextmanager
def registered(*models: ModelSpec, params: Iterable[Param] = ()) -> Iterator[None]:
    """``models`` and ``params`` in the catalog for the duration (a plug-in model, or a test's)."""
    added = [p for p in params if p.name not in PARAMS]
    PARAMS.update({p.name: p for p in added})
    MODELS.extend(models)
    try:
        yield
    finally:
        for spec in models:
            MODELS.remove(spec)
        for param in added:
            del PARAMS[param.name]
