"""The one background service that polls DashScope for every unfinished task and downloads results."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx

from .catalog import get_model
from .config import Settings
from .dashscope import DashScopeClient, TaskResponse
from .downloads import DownloadError, download_video
from .errors import DashScopeError, WanxError
from .journal import Journal
from .schedule import Estimate, next_poll_delay
from .tasks import Status, Task, iso, parse_iso, utcnow

log = logging.getLogger(__name__)

URL_LIFETIME = timedelta(hours=24)
DOWNLOAD_ATTEMPTS = 6  # failed downloads before the task's notes say so (retrying goes on)
DOWNLOAD_BACKOFF = 2.0
DOWNLOAD_MAX_BACKOFF = 60.0
DOWNLOAD_TIMEOUT = 600.0
DASHSCOPE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

ChangeListener = Callable[[Task], Awaitable[None]]
#: Checks a finished download (temporary file, final path): the change to make to its task with what it found
#: (video facts, notes); raises ValueError when the file is not a playable video.
VideoCheck = Callable[[Path, Path], Awaitable[Callable[[Task], Task]]]


def _upstream_time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text, DASHSCOPE_TIME_FORMAT) if text else None
    except ValueError:
        return None


def _queued_seconds(response: TaskResponse) -> float | None:
    """How long DashScope kept the task PENDING (scheduled_time minus submit_time), if it says."""
    submitted, scheduled = _upstream_time(response.output.submit_time), _upstream_time(response.output.scheduled_time)
    return max((scheduled - submitted).total_seconds(), 0.0) if submitted and scheduled else None


def _url_expiry(url: str, fallback: datetime) -> str | None:
    """When DashScope's signed link stops working: its Expires parameter, else 24 h after we saw it."""
    expires = parse_qs(urlsplit(url).query).get("Expires", [""])[0]
    if expires.isdigit():
        return iso(datetime.fromtimestamp(int(expires), tz=fallback.tzinfo))
    return iso(fallback + URL_LIFETIME)


def apply_response(task: Task, response: TaskResponse) -> tuple[Task, float | None]:
    """``task`` updated with a status response; also DashScope's own generation time when it finished."""
    out = response.output
    now = utcnow()
    status = Status(out.task_status)
    changes: dict[str, object] = {"status": status, "updated_at": iso(now), "request_id": response.request_id}
    generation_seconds = None
    if status.is_final and not task.is_final:
        changes["finished_at"] = iso(now)
    if out.video_url and out.video_url != task.video_url:
        changes["video_url"] = out.video_url
        changes["video_url_expires_at"] = _url_expiry(out.video_url, now)
    for name in ("orig_prompt", "actual_prompt"):
        if getattr(out, name):
            changes[name] = getattr(out, name)
    if response.usage:
        changes["usage"] = response.usage
    if status in (Status.FAILED, Status.UNKNOWN) and (out.code or out.message):
        changes["error_code"], changes["error_message"] = out.code, out.message
    start, end = _upstream_time(out.scheduled_time or out.submit_time), _upstream_time(out.end_time)
    if status is Status.SUCCEEDED and start and end:
        generation_seconds = (end - start).total_seconds()
    return task.model_copy(update=changes), generation_seconds


class Watcher:
    """Follows every unfinished task with one poll loop each: however many callers wait on a task, it
    gets at most one status request per poll. Runs inside a task group (``await watcher.run()``)."""

    def __init__(
        self,
        client: DashScopeClient,
        journal: Journal,
        settings: Settings,
        downloads: httpx.AsyncClient,
        on_change: ChangeListener | None = None,
        check_video: VideoCheck | None = None,
    ) -> None:
        self._client = client
        self._check_video = check_video
        self._journal = journal
        self._settings = settings
        self._downloads = downloads
        self.on_change = on_change
        self._following: dict[str, anyio.Event] = {}  # task_id -> wake-up call for its loop
        self._changed: dict[str, anyio.Event] = {}  # task_id -> set (and replaced) on every change
        self._started: dict[str, float] = {}  # task_id -> monotonic time its clock started
        self._group: anyio.abc.TaskGroup | None = None
        self.status_requests = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Resume every task the journal still owes something, then follow new ones until cancelled."""
        for leftover in self._settings.videos_dir.glob(".*.part"):  # downloads cut off by a crash
            leftover.unlink(missing_ok=True)
        async with anyio.create_task_group() as group:
            self._group = group
            for task in self._journal.unfinished():
                self.follow(task)
            task_status.started()
            await anyio.sleep_forever()

    def follow(self, task: Task) -> None:
        """Start following ``task`` unless it is followed already."""
        if self._group is None:
            raise RuntimeError("the watcher is not running")
        if task.task_id in self._following:
            return
        if not task.is_final:
            self._client.limiter.track(task.task_id, get_model(task.model).rate_limit.family)
        self._following[task.task_id] = anyio.Event()
        self._changed.setdefault(task.task_id, anyio.Event())
        created = parse_iso(task.created_at)
        age = (utcnow() - created).total_seconds() if created else 0.0
        self._started[task.task_id] = time.monotonic() - max(age, 0.0)
        self._group.start_soon(self._follow, task.task_id, name=f"follow {task.task_id}")

    def is_following(self, task_id: str) -> bool:
        return task_id in self._following

    async def refresh(self, task_ids: list[str]) -> None:
        """The rate limiter's refresh of the tasks holding its slots: their own poll loops check them now."""
        for task_id in task_ids:
            if self.is_following(task_id):
                self.poke(task_id)
                continue
            try:  # not ours to follow: ask once (get_task frees its slot if it is done)
                await self._client.get_task(task_id)
            except DashScopeError as exc:
                log.warning("could not refresh task %s: %s", task_id, exc.code)

    def poke(self, task_id: str) -> None:
        """Ask for a status check of a followed task now."""
        wake = self._following.get(task_id)
        if wake is not None:
            wake.set()

    async def changed(self, task_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next change of ``task_id``; True if one came."""
        event = self._changed.setdefault(task_id, anyio.Event())
        with anyio.move_on_after(max(timeout, 0)):
            await event.wait()
            return True
        return False

    def elapsed(self, task_id: str) -> float:
        started = self._started.get(task_id)
        return 0.0 if started is None else time.monotonic() - started

    def estimate(self, task: Task) -> Estimate:
        spec = get_model(task.model)
        duration = task.duration or spec.default_duration
        fallback = spec.typical_seconds * duration / spec.default_duration / self._settings.time_scale
        samples = self._journal.generation_seconds(task.model, task.resolution, task.duration)
        return Estimate.from_history(samples, fallback)

    async def _changed_to(self, task: Task, generation_seconds: float | None = None) -> None:
        self._journal.update(task, generation_seconds)
        event = self._changed.get(task.task_id)
        self._changed[task.task_id] = anyio.Event()
        if event is not None:
            event.set()
        if self.on_change is not None:
            await self.on_change(task)

    async def _follow(self, task_id: str) -> None:
        try:
            task = await self._poll_until_final(task_id)
            if task.status is Status.SUCCEEDED and self._settings.download and not task.video_path:
                await self._download(task)
        except WanxError as exc:
            log.error("stopped following %s: %s", task_id, exc)
        finally:
            self._following.pop(task_id, None)
            event = self._changed.pop(task_id, None)
            if event is not None:
                event.set()

    async def _poll_until_final(self, task_id: str) -> Task:
        estimate: Estimate | None = None
        failures = 0
        while True:
            task = self._journal.get(task_id)
            if task is None:
                raise WanxError(f"task {task_id} vanished from the journal")
            if task.is_final:
                return task
            if estimate is None:
                estimate = self.estimate(task)
            delay = next_poll_delay(self.elapsed(task_id), estimate, self._settings.poll_interval)
            if failures:
                delay = min(self._settings.poll_interval, delay * 2**failures)
            wake = self._following[task_id]
            with anyio.move_on_after(delay):
                await wake.wait()
            self._following[task_id] = anyio.Event()
            try:
                self.status_requests += 1
                response = await self._client.get_task(task_id)
            except DashScopeError as exc:
                failures = min(failures + 1, 6)
                log.warning("status check of %s failed (%s); will retry", task_id, exc.code)
                continue
            failures = 0
            updated, seconds = apply_response(task, response)
            if updated.status is Status.RUNNING and task.status is Status.PENDING:
                # it started when DashScope says it left the queue, not when we first saw it RUNNING (a poll late)
                queued, now = _queued_seconds(response), time.monotonic()
                self._started[task_id] = now if queued is None else min(self._started[task_id] + queued, now)
            await self._changed_to(updated, seconds)

    async def _download(self, task: Task) -> None:
        """Save the video. A failure that may pass (network, server, full disk) is retried until the link
        expires, backing off to DOWNLOAD_MAX_BACKOFF; after DOWNLOAD_ATTEMPTS of them the task's notes say so."""
        dest = self._settings.videos_dir / f"{task.task_id}.mp4"
        amend: Callable[[Task], Task] | None = None

        async def verify(part: Path) -> None:
            nonlocal amend
            if self._check_video is not None:
                amend = await self._check_video(part, dest)

        for attempt in itertools.count(1):
            expires = parse_iso(task.video_url_expires_at)
            if not task.video_url or (expires and expires <= utcnow()):
                await self._changed_to(task.model_copy(update={"notes": [*task.notes, "video link expired"]}))
                return
            try:
                await download_video(
                    self._downloads, task.video_url, dest, allowed_hosts=self._settings.download_hosts,
                    timeout=DOWNLOAD_TIMEOUT, verify=verify,
                )
            except DownloadError as exc:
                self._journal.note_download_failure(task.task_id, str(exc))
                if not exc.retryable:
                    await self._changed_to(task.model_copy(update={"notes": [*task.notes, f"download failed: {exc}"]}))
                    return
                if attempt == DOWNLOAD_ATTEMPTS:
                    note = f"download failed: {exc}; retrying until the link expires"
                    await self._changed_to(task.model_copy(update={"notes": [*task.notes, note]}))
                log.warning("download of %s failed (attempt %d): %s", task.task_id, attempt, exc)
                await anyio.sleep(min(DOWNLOAD_BACKOFF * 2 ** min(attempt - 1, 20), DOWNLOAD_MAX_BACKOFF))
                continue
            saved = amend(task) if amend is not None else task
            await self._changed_to(saved.model_copy(update={"video_path": str(Path(dest))}))  # notes as before
            return


def remaining_seconds(watcher: Watcher, task: Task) -> float | None:
    """Rough seconds left for an unfinished task, from its learned estimate."""
    if task.is_final:
        return None
    left = watcher.estimate(task).seconds - watcher.elapsed(task.task_id)
    return max(0.0, math.ceil(left))
