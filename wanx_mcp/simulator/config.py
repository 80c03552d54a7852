"""How a simulator behaves: speed, keys, randomness, limits and expiry."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SIMULATOR_KEY
from .rules import FAMILIES, Family

DAY = 24 * 3600.0


@dataclass(frozen=True)
class FamilyLimits:
    """Overrides of one rate-limit family's documented figures (None keeps the documented ones)."""

    submissions_per_second: int | None = None
    running_tasks: int | None = None


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything a simulator can be told. Times are simulated seconds, ``speed`` times shorter in reality.

    - ``speed``: how much faster than DashScope tasks run (and videos and tasks expire).
    - ``api_keys``: the keys accepted as ``Authorization: Bearer <key>`` (the keys of ``accounts`` too).
    - ``accounts``: api key -> account name; a key not listed is its own account. Rate limits, running
      slots, task visibility and task lists are per account, shared by all its keys, as on DashScope.
    - ``jitter``/``seed``: vary each task's duration by 0.8-1.2x, from a seeded random generator.
    - ``limits``: per rate-limit family (``"wan2.1/2.2"``, ``"wan2.5/2.6"``) overrides
      of the documented limits (rules.py).
    - ``expiry_seconds``: lifetime of task ids (from submission) and video URLs (from the end).
    - ``schedule_delay``: time between submission and the earliest start.
    - ``hold_pending``: start with the queue held (no task leaves PENDING; see SimulatorState.hold_pending).
    - ``utc_offset_hours``/``region``: how timestamps and task lists present the simulated region.
    - ``video_base_url``: where result-video links point instead of the simulator itself, e.g.
      ``"https://evil.example.com"``, to test that downloads refuse hosts that are not allowed.
    - ``state_path``: a SQLite file keeping the tasks (and their images) across simulator processes,
      shared by every simulator that names it (see state.py); None keeps everything in memory.
    - ``render``: make each result video from the task's submitted image(s) (see videos.py) at the
      delivered resolution, the requested duration and ``fps`` frames per second (16, as Wan 2.1/2.2);
      False serves one fixed sample MP4 (320x240), which is faster.
    - ``render_scale``: shrink rendered videos by this factor after the size rule (e.g. 0.25 in tests).
    """

    speed: float = 1.0
    api_keys: Collection[str] = frozenset({SIMULATOR_KEY})
    accounts: Mapping[str, str] = field(default_factory=dict)
    jitter: bool = True
    seed: int | None = 0
    limits: Mapping[str, FamilyLimits] = field(default_factory=dict)
    expiry_seconds: float = DAY
    schedule_delay: float = 0.02
    hold_pending: bool = False
    utc_offset_hours: float = 8.0
    region: str = "cn-beijing"
    video_base_url: str | None = None
    state_path: Path | None = None
    render: bool = True
    render_scale: float = 1.0
    fps: int = 16

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"speed must be positive, not {self.speed}")
        if not 0 < self.render_scale <= 1:
            raise ValueError(f"render_scale must be in (0, 1], not {self.render_scale}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, not {self.fps}")
        if self.expiry_seconds <= 0:
            raise ValueError(f"expiry_seconds must be positive, not {self.expiry_seconds}")
        unknown = set(self.limits) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown rate-limit families {sorted(unknown)}; known: {sorted(FAMILIES)}")

    def rate_limit(self, family: str) -> Family:
        """The documented limits of ``family`` with this config's overrides applied."""
        base = FAMILIES[family]
        override = self.limits.get(family, FamilyLimits())
        return Family(
            name=family,
            submissions_per_second=override.submissions_per_second or base.submissions_per_second,
            running_tasks=override.running_tasks or base.running_tasks,
        )

    def accepts(self, key: str) -> bool:
        return key in self.api_keys or key in self.accounts

    def account(self, key: str) -> str:
        """The account ``key`` belongs to."""
        return self.accounts.get(key, key)

    def real_seconds(self, simulated: float) -> float:
        """How long ``simulated`` seconds last on the wall clock."""
        return simulated / self.speed
