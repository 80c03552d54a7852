"""One time base for the simulator: wall-clock epoch seconds, shown in DashScope's formats.

Wall-clock time, not monotonic, so that simulator processes sharing a state file agree on every instant.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone


class Clock:
    """Epoch seconds (``now``), presented in the simulated region's time zone."""

    def __init__(self, utc_offset_hours: float) -> None:
        self._mono_offset = time.time() - time.monotonic()
        self.zone = timezone(timedelta(hours=utc_offset_hours))

    @staticmethod
    def now() -> float:
        return time.time()

    def mono(self, wall: float) -> float:
        """This process's ``time.monotonic()`` reading at the epoch instant ``wall``."""
        return wall - self._mono_offset

    def stamp(self, wall: float) -> str:
        """``YYYY-MM-DD HH:mm:ss.SSS`` in the simulated region's time zone."""
        moment = datetime.fromtimestamp(wall, self.zone)
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"

    @staticmethod
    def epoch_ms(wall: float) -> int:
        return round(wall * 1000)

    def parse_compact(self, text: str) -> float:
        """The epoch instant of a ``YYYYMMDDhhmmss`` query time; ValueError if malformed."""
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=self.zone).timestamp()
