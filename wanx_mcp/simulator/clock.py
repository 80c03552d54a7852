"""One time base for the simulator: monotonic seconds, shown as wall-clock times in DashScope's formats."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone


class Clock:
    """Monotonic time (``now``) mapped onto the wall clock of the moment the simulator started."""

    def __init__(self, utc_offset_hours: float) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self.zone = timezone(timedelta(hours=utc_offset_hours))

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def wall(self, mono: float) -> float:
        """Epoch seconds of the monotonic instant ``mono``."""
        return self._wall0 + (mono - self._mono0)

    def mono(self, wall: float) -> float:
        return self._mono0 + (wall - self._wall0)

    def stamp(self, mono: float) -> str:
        """``YYYY-MM-DD HH:mm:ss.SSS`` in the simulated region's time zone."""
        moment = datetime.fromtimestamp(self.wall(mono), self.zone)
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"

    def epoch_ms(self, mono: float) -> int:
        return round(self.wall(mono) * 1000)

    def parse_compact(self, text: str) -> float:
        """The monotonic instant of a ``YYYYMMDDhhmmss`` query time; ValueError if malformed."""
        moment = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=self.zone)
        return self.mono(moment.timestamp())
