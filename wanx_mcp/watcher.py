"""The background service that polls DashScope for unfinished tasks and downloads their results.

Processes sharing a store share the work through watch leases: a process follows (polls and downloads) a task
only while it holds the task's lease, renews its leases every ``renew_every`` seconds, and every
``renew_every`` seconds takes over the unfinished tasks whose lease lapsed (their holder died). Everything a
poll decides from is in the store or in DashScope's answers, so whoever takes a task over polls it on the same
schedule. Callers waiting in any process are woken by the store's change check, not by this process."""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx

from .catalog import ModelSpec, get_model
from .config import Settings
from .dashscope import DashScopeClient, TaskResponse
from .downloads import DownloadError, download_video
from .errors import DashScopeError, InvalidInput, WanxError
from .schedule import Estimate, next_poll_delay
from .store import TaskStore
from .tasks import Status, Task, iso, parse_iso, utcnow

log = logging.getLogger(__name__)

URL_LIFETIME = timedelta(hours=24)
DOWNLOAD_ATTEMPTS = 6  # failed downloads before the task's notes say so (retrying goes on)
DOWNLOAD_BACKOFF = 2.0
DOWNLOAD_MAX_BACKOFF = 60.0
DOWNLOAD_TIMEOUT = 600.0
#: The typical generation time assumed for a task of a model the catalog does not know.
UNKNOWN_MODEL_SECONDS = 120.0
#: Seconds a watch lease lasts unless renewed; a dead holder's tasks are taken over after at most this long.
LEASE_TTL = 30.0
#: Seconds between renewals of this process's leases and scans for tasks nobody follows.
RENEW_EVERY = 10.0
#: The note a download that is retried no longer ends with; notes starting with DOWNLOAD_FAILED are stale
#: once the video is saved.
DOWNLOAD_FAILED = "download failed"
RETRYING = "retrying until the link expires"
LINK_EXPIRED = "video link expired"
#: Seconds before a follow loop that failed unexpectedly is tried again, doubling up to FOLLOW_MAX_BACKOFF.
FOLLOW_BACKOFF = 0.5
FOLLOW_MAX_BACKOFF = 60.0
#: Seconds an estimate of generation time is reused before the store's history is read again.
ESTIMATE_FOR = 5.0

ChangeListener = Callable[[Task], Awaitable[None]]
#: Checks a finished download (temporary file, final path): the change to make to its task with what it found
#: (video facts, notes); raises ValueError when the file is not a playable video.
VideoCheck = Callable[[Path, Path], Awaitable[Callable[[Task], Task]]]


def _known_model(name: str) -> ModelSpec | None:
    """The catalog's model, None for one it lacks (a task from the account's list, an old journal row)."""
    try:
        return get_model(name)
    except InvalidInput:
        return None


def _upstream_time(text: str | None) -> datetime | None:
    """DashScope's ``YYYY-MM-DD HH:MM:SS.mmm`` (its region's time, no zone); None if absent or otherwise
    (``fromisoformat``: a tenth of ``strptime``'s cost, on every status answer)."""
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is None else None


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


def settled(task: Task, download: bool = True) -> bool:
    """Whether nothing more will happen to ``task``: final, and its video saved unless downloading is off or
    was given up (the link expired, or a failure that cannot pass)."""
    if not task.is_final:
        return False
    if task.status is not Status.SUCCEEDED or task.video_path or not download:
        return True
    return any(note == LINK_EXPIRED or (note.startswith(DOWNLOAD_FAILED) and not note.endswith(RETRYING))
               for note in task.notes)  # fmt: skip


class Watcher:
    """Follows the unfinished tasks it holds the lease of, with one poll loop each: however many callers wait
    on a task, it gets at most one status request per poll, from one process. Runs inside a task group
    (``await watcher.run()``)."""

    def __init__(
        self,
        client: DashScopeClient,
        store: TaskStore,
        settings: Settings,
        downloads: httpx.AsyncClient,
        on_change: ChangeListener | None = None,
        check_video: VideoCheck | None = None,
        *,
        owner: str,
        lease_ttl: float = LEASE_TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self._client = client
        self._check_video = check_video
        self._store = store
        self._settings = settings
        self._downloads = downloads
        self._download_slots = anyio.CapacityLimiter(settings.download_concurrency)
        self.on_change = on_change
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every
        self._following: dict[str, anyio.Event] = {}  # task_id -> wake-up call for its loop
        self._scopes: dict[str, anyio.CancelScope] = {}  # task_id -> its loop, while it holds the lease
        self._queued: dict[str, float] = {}  # task_id -> seconds DashScope kept it PENDING (from its answers)
        self._estimates: dict[tuple[str, str | None, int | None], tuple[float, Estimate]] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self.status_requests = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Resume every task the store still owes something that nobody follows, then follow new ones and take
        over abandoned ones until cancelled; on the way out, give the leases up for others to take."""
        await self._store.heartbeat(self.owner, self.lease_ttl, time.time())
        await self._reap()
        await self._sweep()
        resume = await self._store.unfinished(unleased_at=time.time())  # a failure here is the caller's, unwrapped
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                for task in resume:
                    self.follow(task)
                task_status.started()
                while True:
                    await anyio.sleep(self.renew_every)
                    await self._maintain()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._store.retire(self.owner)
                except WanxError as exc:  # the leases lapse by themselves
                    log.warning("could not give up the watch leases: %s", exc)

    async def _maintain(self) -> None:
        """Renew this process's heartbeat and leases, stop loops whose lease was lost, take over abandoned tasks."""
        now = time.time()
        try:
            await self._store.heartbeat(self.owner, self.lease_ttl, now)
            await self._reap()
            held = set(await self._store.renew_leases(self.owner, self.lease_ttl, now))
            for task_id, scope in list(self._scopes.items()):
                if task_id not in held:
                    log.warning("lost the watch lease of %s to another process; no longer following it", task_id)
                    scope.cancel()
            for task in await self._store.unfinished(unleased_at=now):
                if not settled(task, self._settings.download):
                    self.follow(task)
        except WanxError as exc:
            log.error("could not renew watch leases: %s", exc)

    async def _reap(self) -> None:
        """Retire the owners on this machine whose process is gone (killed), so that their tasks are taken over
        and their submissions resolved at once rather than when their heartbeat lapses."""
        host = socket.gethostname()
        for owner in await self._store.live_owners(time.time()):
            parts = owner.rsplit(":", 2)  # new_owner_id: host:pid:tag
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid() or _alive(pid):
                continue
            log.warning("process %s of %s is gone: taking over its tasks", pid, owner)
            await self._store.retire(owner)

    async def _sweep(self) -> None:
        """Delete temporary download files older than every live lease: their downloads are over."""
        leases = await self._store.leases(time.time())
        oldest = min((lease.acquired_at for lease in leases), default=time.time())
        for leftover in self._settings.videos_dir.glob(".*.part"):
            try:
                if leftover.stat().st_mtime < oldest:
                    leftover.unlink(missing_ok=True)
            except OSError:  # gone meanwhile, or not ours to delete
                continue

    def follow(self, task: Task) -> None:
        """Start following ``task`` unless this process follows it already; the loop ends at once if another
        live process holds its lease."""
        if self._group is None:
            raise RuntimeError("the watcher is not running")
        if task.task_id in self._following:
            return
        self._following[task.task_id] = anyio.Event()
        self._group.start_soon(self._follow, task, name=f"follow {task.task_id}")

    async def claim(self, task_id: str) -> bool:
        """Take the watch lease of a task about to be stored, so no other process starts following it first."""
        return await self._store.acquire_lease(task_id, self.owner, self.lease_ttl, time.time())

    def is_following(self, task_id: str) -> bool:
        return task_id in self._following

    async def refresh(self, task_ids: list[str]) -> None:
        """The rate limiter's refresh of the tasks holding its slots: their poll loops (in whichever process
        holds their lease) check them; only tasks nobody follows are asked about here."""
        leased = {lease.task_id for lease in await self._store.leases(time.time())}
        for task_id in task_ids:
            if self.poke(task_id) or task_id in leased:
                continue
            try:  # nobody follows it: ask once (get_task frees its slot if it is done)
                await self._client.get_task(task_id)
            except DashScopeError as exc:
                log.warning("could not refresh task %s: %s", task_id, exc.code)

    def poke(self, task_id: str) -> bool:
        """Ask for a status check of a task this process follows now; False if it does not follow it."""
        wake = self._following.get(task_id)
        if wake is not None:
            wake.set()
        return wake is not None

    def elapsed(self, task: Task) -> float:
        """Seconds ``task`` has been generating: since its creation, less the time DashScope said it queued."""
        created = parse_iso(task.created_at)
        age = (utcnow() - created).total_seconds() if created else 0.0
        return max(age - self._queued.get(task.task_id, 0.0), 0.0)

    async def estimate(self, task: Task) -> Estimate:
        """How long tasks like ``task`` take, from recent ones (read from the store at most every
        ESTIMATE_FOR seconds per kind of task)."""
        key = (task.model, task.resolution, task.duration)
        cached = self._estimates.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        spec = _known_model(task.model)
        if spec is None:
            fallback = UNKNOWN_MODEL_SECONDS / self._settings.time_scale
        else:
            duration = task.duration or spec.default_duration
            fallback = spec.typical_seconds * duration / spec.default_duration / self._settings.time_scale
        samples = await self._store.generation_seconds(task.model, task.resolution, task.duration)
        estimate = Estimate.from_history(samples, fallback)
        self._estimates[key] = (time.monotonic() + ESTIMATE_FOR, estimate)
        return estimate

    async def _changed_to(
        self, task_id: str, change: Callable[[Task], Task], generation_seconds: float | None = None
    ) -> Task:
        updated = await self._store.modify(task_id, change, generation_seconds=generation_seconds)
        if updated is None:
            raise WanxError(f"task {task_id} vanished from the journal")
        if self.on_change is not None:
            await self.on_change(updated)
        return updated

    async def _follow(self, task: Task) -> None:
        """Follow ``task`` to its end while holding its lease. A WanxError stops this loop (the scan for unfollowed
        tasks starts it again); any other exception is logged once and the loop retried with backoff, and never
        reaches the task group that every other task's loop runs in."""
        task_id = task.task_id
        try:
            if not await self.claim(task_id):
                return  # another process follows it; the scan takes it over should that one die
            with anyio.CancelScope() as scope:
                self._scopes[task_id] = scope
                for failures in itertools.count(1):
                    try:
                        await self._see_through(task)
                        return
                    except WanxError:
                        raise
                    except Exception:  # a bug, or a surprise from a collaborator: this task only, tried again
                        if failures == 1:
                            log.exception("following %s failed unexpectedly; retrying with backoff", task_id)
                        await anyio.sleep(min(FOLLOW_BACKOFF * 2 ** min(failures - 1, 20), FOLLOW_MAX_BACKOFF))
        except WanxError as exc:
            log.error("stopped following %s: %s", task_id, exc)
        finally:
            self._following.pop(task_id, None)
            self._queued.pop(task_id, None)
            if self._scopes.pop(task_id, None) is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._store.release_lease(task_id, self.owner)
                    except WanxError as exc:  # it lapses by itself
                        log.warning("could not release the watch lease of %s: %s", task_id, exc)

    async def _see_through(self, task: Task) -> None:
        """Poll ``task`` until it is final, then save its video (each step safe to repeat)."""
        spec = _known_model(task.model)
        if not task.is_final and spec is not None:
            await self._client.limiter.track(task.task_id, spec.rate_limit.family)
        task = await self._poll_until_final(task.task_id)
        if task.status is Status.SUCCEEDED and self._settings.download and not task.video_path:
            await self._download(task)

    async def _poll_until_final(self, task_id: str) -> Task:
        estimate: Estimate | None = None
        failures = 0
        while True:
            task = await self._store.get(task_id)
            if task is None:
                raise WanxError(f"task {task_id} vanished from the journal")
            if task.is_final:
                return task
            if estimate is None:
                estimate = await self.estimate(task)
            delay = next_poll_delay(self.elapsed(task), estimate, self._settings.poll_interval)
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
            queued = _queued_seconds(response)
            if queued is not None:  # it started when DashScope says it left the queue, not when we saw it RUNNING
                self._queued[task_id] = queued
            seconds = apply_response(task, response)[1]
            await self._changed_to(
                task_id, lambda current, answer=response: apply_response(current, answer)[0], seconds
            )

    async def _download(self, task: Task) -> None:
        """Save the video. A failure that may pass (network, server, full disk) is retried until the link
        expires (or for as long as the error's ``retry_for`` allows), backing off to DOWNLOAD_MAX_BACKOFF; after
        DOWNLOAD_ATTEMPTS of them the task's notes say so. A video another process saved meanwhile counts as
        saved; stale failure notes go once it is saved."""
        dest = self._settings.videos_dir / f"{task.task_id}.mp4"
        bounded_since: float | None = None  # when failures worth retrying only for a while (disk full) began
        amend: Callable[[Task], Task] | None = None

        async def verify(part: Path) -> None:
            nonlocal amend
            if self._check_video is not None:
                amend = await self._check_video(part, dest)

        for attempt in itertools.count(1):
            current = await self._store.get(task.task_id)
            if current is not None and current.video_path:
                return  # saved by another process
            if os.path.exists(dest):  # only complete videos are ever renamed to dest
                await self._saved(task.task_id, dest)
                return
            expires = parse_iso(task.video_url_expires_at)
            if not task.video_url or (expires and expires <= utcnow()):
                await self._changed_to(task.task_id, _noted(LINK_EXPIRED))
                return
            try:
                await download_video(
                    self._downloads, task.video_url, dest, allowed_hosts=self._settings.download_hosts,
                    timeout=DOWNLOAD_TIMEOUT, folder=self._settings.videos_dir, slots=self._download_slots,
                    verify=verify,
                )
            except DownloadError as exc:
                if os.path.exists(dest):  # another process finished it first
                    continue
                await self._store.note_download_failure(task.task_id, str(exc))
                if exc.retry_for is None:
                    bounded_since = None
                else:
                    bounded_since = time.monotonic() if bounded_since is None else bounded_since
                    if time.monotonic() - bounded_since >= exc.retry_for:
                        note = f"{DOWNLOAD_FAILED}: {exc}; gave up after {exc.retry_for:g} s of retrying"
                        await self._changed_to(task.task_id, _noted(note))
                        return
                if not exc.retryable:
                    await self._changed_to(task.task_id, _noted(f"{DOWNLOAD_FAILED}: {exc}"))
                    return
                if attempt == DOWNLOAD_ATTEMPTS:
                    await self._changed_to(task.task_id, _noted(f"{DOWNLOAD_FAILED}: {exc}; {exc.retrying}"))
                log.warning("download of %s failed (attempt %d): %s", task.task_id, attempt, exc)
                await anyio.sleep(min(DOWNLOAD_BACKOFF * 2 ** min(attempt - 1, 20), DOWNLOAD_MAX_BACKOFF))
                continue
            await self._saved(task.task_id, dest, amend)
            return

    async def _saved(self, task_id: str, dest: Path, amend: Callable[[Task], Task] | None = None) -> None:
        """Record the saved video (with what the video check learned of it), dropping stale failure notes."""

        def saved(task: Task) -> Task:
            task = amend(task) if amend is not None else task
            notes = [note for note in task.notes if not note.startswith(DOWNLOAD_FAILED)]
            return task.model_copy(update={"video_path": str(Path(dest)), "notes": notes})

        await self._changed_to(task_id, saved)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def _noted(note: str) -> Callable[[Task], Task]:
    """A change adding ``note`` to a task's notes (once)."""
    return lambda task: task if note in task.notes else task.model_copy(update={"notes": [*task.notes, note]})


async def remaining_seconds(watcher: Watcher, task: Task) -> float | None:
    """Rough seconds left for an unfinished task, from its learned estimate."""
    if task.is_final:
        return None
    left = (await watcher.estimate(task)).seconds - watcher.elapsed(task)
    return max(0.0, math.ceil(left))
