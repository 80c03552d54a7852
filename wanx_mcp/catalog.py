"""The Wan image-to-video models as data: adding a model is one entry in ``MODELS``.

Figures come from ``shared/dashscope-wan-i2v.md`` (Alibaba Cloud Model Studio docs, 2026).
"""

from __future__ import annotations

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


class ModelSpec(BaseModel):
    """Everything wanx-mcp knows about one model."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    resolutions: tuple[str, ...]
    default_resolution: str
    durations: tuple[int, ...]
    default_duration: int = 5
    templates: tuple[str, ...] = ()
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    image: ImageLimits = ImageLimits()
    rate_limit: RateLimit
    price_cny_per_second: dict[str, float | None] = Field(
        description="Beijing price per second of video, by resolution (None: not published)"
    )
    regions: tuple[str, ...] = ("beijing", "singapore")
    aliases: dict[str, str] = Field(default_factory=dict, description="region -> the name used there")
    recommended: bool = False
    supports_audio_url: bool = False
    shot_types: tuple[str, ...] = ()
    supports_audio_toggle: bool = False
    returns_actual_prompt: bool = True
    typical_seconds: float = Field(description="typical generation time of the default video, in seconds")

    def name_in(self, region: str) -> str:
        """The spelling this model has in ``region``."""
        return self.aliases.get(region, self.name)

    def price(self, resolution: str, duration: int) -> float | None:
        per_second = self.price_cny_per_second.get(resolution)
        return None if per_second is None else round(per_second * duration, 4)

    @property
    def sends_duration(self) -> bool:
        """DashScope takes ``duration`` only where the model offers more than one."""
        return len(self.durations) > 1


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="wan2.2-i2v-flash",
        description="Wan 2.2 flash: fast and cheap, good quality; the default.",
        resolutions=("480P", "720P", "1080P"),
        default_resolution="720P",
        durations=(5,),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.10, "720P": 0.20, "1080P": 0.48},
        recommended=True,
        typical_seconds=60,
    ),
    ModelSpec(
        name="wan2.2-i2v-plus",
        description="Wan 2.2 plus: best 2.2 quality, camera control; slower.",
        resolutions=("480P", "1080P"),
        default_resolution="1080P",
        durations=(5,),
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.14, "1080P": 0.70},
        recommended=True,
        typical_seconds=210,
    ),
    ModelSpec(
        name="wanx2.1-i2v-plus",
        description="Wan 2.1 plus: 720P, with the full set of effect templates.",
        resolutions=("720P",),
        default_resolution="720P",
        durations=(5,),
        templates=TEMPLATES_21 + TEMPLATES_21_PLUS_ONLY,
        rate_limit=WAN_21_22,
        price_cny_per_second={"720P": 0.70},
        aliases={"singapore": "wan2.1-i2v-plus"},
        typical_seconds=240,
    ),
    ModelSpec(
        name="wanx2.1-i2v-turbo",
        description="Wan 2.1 turbo: about three times faster than plus; 3-5 s clips; effect templates.",
        resolutions=("480P", "720P"),
        default_resolution="720P",
        durations=(3, 4, 5),
        templates=TEMPLATES_21,
        rate_limit=WAN_21_22,
        price_cny_per_second={"480P": 0.24, "720P": 0.24},
        aliases={"singapore": "wan2.1-i2v-turbo"},
        typical_seconds=80,
    ),
    ModelSpec(
        name="wan2.5-i2v-preview",
        description="Wan 2.5 preview: 5 or 10 s with sound (auto-dubbed or from audio_url).",
        resolutions=("480P", "720P", "1080P"),
        default_resolution="1080P",
        durations=(5, 10),
        max_prompt_chars=1500,
        image=ImageLimits(max_bytes=20 * 1024 * 1024),
        rate_limit=WAN_25_26,
        price_cny_per_second={"480P": 0.3, "720P": 0.6, "1080P": 1.0},
        supports_audio_url=True,
        typical_seconds=300,
    ),
    ModelSpec(
        name="wan2.6-i2v",
        description="Wan 2.6: 2-15 s with sound, single- or multi-shot.",
        resolutions=("720P", "1080P"),
        default_resolution="1080P",
        durations=tuple(range(2, 16)),
        max_prompt_chars=1500,
        image=ImageLimits(max_bytes=20 * 1024 * 1024),
        rate_limit=WAN_25_26,
        price_cny_per_second={"720P": 0.6, "1080P": 1.0},
        supports_audio_url=True,
        shot_types=("single", "multi"),
        returns_actual_prompt=False,
        typical_seconds=300,
    ),
    ModelSpec(
        name="wan2.6-i2v-flash",
        description="Wan 2.6 flash: faster 2.6, 2-15 s, sound on or off.",
        resolutions=("720P", "1080P"),
        default_resolution="1080P",
        durations=tuple(range(2, 16)),
        max_prompt_chars=1500,
        image=ImageLimits(max_bytes=20 * 1024 * 1024),
        rate_limit=WAN_25_26,
        price_cny_per_second={"720P": None, "1080P": None},
        supports_audio_url=True,
        shot_types=("single", "multi"),
        supports_audio_toggle=True,
        returns_actual_prompt=False,
        typical_seconds=120,
    ),
)

DEFAULT_MODEL = "wan2.2-i2v-flash"

_BY_NAME: dict[str, ModelSpec] = {m.name: m for m in MODELS}
_BY_ALIAS: dict[str, ModelSpec] = {alias: m for m in MODELS for alias in m.aliases.values()}


def get_model(name: str) -> ModelSpec:
    """The model called ``name`` (in any region's spelling), or InvalidInput listing the valid names."""
    spec = _BY_NAME.get(name) or _BY_ALIAS.get(name)
    if spec is None:
        raise InvalidInput("model", name, "unknown model", valid=[m.name for m in MODELS])
    return spec


def rate_limits() -> dict[str, RateLimit]:
    """The rate-limit families, by name."""
    return {m.rate_limit.family: m.rate_limit for m in MODELS}
