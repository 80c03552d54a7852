"""The simulator's own table of DashScope's documented Wan image-to-video rules.

Transcribed from ``shared/dashscope-wan-i2v.md`` (Alibaba Cloud Model Studio docs, 2026), independently of
the client's catalog on purpose: the simulator is the oracle the client is tested against, so a wrong
figure in the catalog fails a test instead of passing on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_FRAME = "/services/aigc/video-generation/video-synthesis"
KEYFRAMES = "/services/aigc/image2video/video-synthesis"
ENDPOINT_NAMES = {FIRST_FRAME: "first-frame (image-to-video)", KEYFRAMES: "first-and-last-frame"}

MAX_SEED = 2_147_483_647
MB = 1024 * 1024


@dataclass(frozen=True)
class Family:
    """A rate-limit family: per-account submissions per second and concurrently running tasks."""

    name: str
    submissions_per_second: int
    running_tasks: int


WAN_21_22 = Family("wan2.1/2.2", submissions_per_second=2, running_tasks=2)
WAN_25_26 = Family("wan2.5/2.6", submissions_per_second=5, running_tasks=5)
FAMILIES = {family.name: family for family in (WAN_21_22, WAN_25_26)}

EFFECTS_21 = (
    "squish", "rotation", "poke", "inflate", "dissolve", "carousel", "singleheart",
    "flying", "rose", "crystalrose", "hug", "frenchkiss", "coupleheart",
)  # fmt: skip
EFFECTS_21_PLUS = (
    "melt", "icecream", "dance1", "dance2", "dance3", "dance4", "dance5",
    "mermaid", "graduation", "dragon", "money", "jellyfish", "pupil",
)  # fmt: skip
EFFECTS_KF2V_PLUS = ("hanfu-1", "solaron", "magazine", "mech1", "mech2")


@dataclass(frozen=True)
class ImageField:
    """One image slot of ``input``."""

    name: str
    required: bool = True


IMG_URL = (ImageField("img_url"),)
KEYFRAME_FIELDS = (ImageField("first_frame_url"), ImageField("last_frame_url", required=False))


@dataclass(frozen=True)
class ModelRule:
    """What DashScope accepts for one model, and how it behaves (typical generation time, usage shape)."""

    name: str
    endpoint: str
    resolutions: tuple[str, ...]
    default_resolution: str
    durations: tuple[int, ...]
    family: Family
    typical_seconds: float
    default_duration: int = 5
    images: tuple[ImageField, ...] = IMG_URL
    templates: tuple[str, ...] = ()
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    max_image_bytes: int = 10 * MB
    audio_url: bool = False
    audio_toggle: bool = False
    shot_types: tuple[str, ...] = ()
    returns_actual_prompt: bool = True
    aliases: tuple[str, ...] = ()

    @property
    def duration_may_be_sent(self) -> bool:
        """``parameters.duration`` is documented only where a model offers more than one length."""
        return len(self.durations) > 1


RULES: tuple[ModelRule, ...] = (
    ModelRule(
        name="wan2.2-i2v-plus",
        endpoint=FIRST_FRAME,
        resolutions=("480P", "1080P"),
        default_resolution="1080P",
        durations=(5,),
        family=WAN_21_22,
        typical_seconds=210,
    ),
    ModelRule(
        name="wan2.2-i2v-flash",
        endpoint=FIRST_FRAME,
        resolutions=("480P", "720P", "1080P"),
        default_resolution="720P",
        durations=(5,),
        family=WAN_21_22,
        typical_seconds=60,
    ),
    ModelRule(
        name="wanx2.1-i2v-plus",
        endpoint=FIRST_FRAME,
        resolutions=("720P",),
        default_resolution="720P",
        durations=(5,),
        family=WAN_21_22,
        typical_seconds=240,
        templates=EFFECTS_21 + EFFECTS_21_PLUS,
        aliases=("wan2.1-i2v-plus",),
    ),
    ModelRule(
        name="wanx2.1-i2v-turbo",
        endpoint=FIRST_FRAME,
        resolutions=("480P", "720P"),
        default_resolution="720P",
        durations=(3, 4, 5),
        family=WAN_21_22,
        typical_seconds=80,
        templates=EFFECTS_21,
        aliases=("wan2.1-i2v-turbo",),
    ),
    ModelRule(
        name="wan2.5-i2v-preview",
        endpoint=FIRST_FRAME,
        resolutions=("480P", "720P", "1080P"),
        default_resolution="1080P",
        durations=(5, 10),
        family=WAN_25_26,
        typical_seconds=300,
        max_prompt_chars=1500,
        max_image_bytes=20 * MB,
        audio_url=True,
    ),
    ModelRule(
        name="wan2.6-i2v",
        endpoint=FIRST_FRAME,
        resolutions=("720P", "1080P"),
        default_resolution="1080P",
        durations=tuple(range(2, 16)),
        family=WAN_25_26,
        typical_seconds=300,
        max_prompt_chars=1500,
        max_image_bytes=20 * MB,
        audio_url=True,
        shot_types=("single", "multi"),
        returns_actual_prompt=False,
    ),
    ModelRule(
        name="wan2.6-i2v-flash",
        endpoint=FIRST_FRAME,
        resolutions=("720P", "1080P"),
        default_resolution="1080P",
        durations=tuple(range(2, 16)),
        family=WAN_25_26,
        typical_seconds=120,
        max_prompt_chars=1500,
        max_image_bytes=20 * MB,
        audio_url=True,
        audio_toggle=True,
        shot_types=("single", "multi"),
        returns_actual_prompt=False,
    ),
    ModelRule(
        name="wan2.2-kf2v-flash",
        endpoint=KEYFRAMES,
        resolutions=("480P", "720P", "1080P"),
        default_resolution="720P",
        durations=(5,),
        family=WAN_21_22,
        typical_seconds=60,
        images=KEYFRAME_FIELDS,
    ),
    ModelRule(
        name="wanx2.1-kf2v-plus",
        endpoint=KEYFRAMES,
        resolutions=("720P",),
        default_resolution="720P",
        durations=(5,),
        family=WAN_21_22,
        typical_seconds=240,
        images=KEYFRAME_FIELDS,
        templates=EFFECTS_KF2V_PLUS,
    ),
)

_BY_NAME = {name: rule for rule in RULES for name in (rule.name, *rule.aliases)}


def find_rule(name: str) -> ModelRule | None:
    """The rule of the model called ``name`` in any region's spelling (both are accepted everywhere)."""
    return _BY_NAME.get(name)
