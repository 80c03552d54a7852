"""The wanx library in one object: submit, follow, wait for, cancel and list video tasks (no MCP needed)."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, Field

from . import redact
from .catalog import MODELS, ModelSpec, RateLimit, budget_price, get_model
from .config import Settings, load_settings
from .dashscope import TASK_ID, DashScopeClient, TaskListItem
from .errors import DashScopeError, InvalidInput, WanxError
from .images import PreparedImage, prepare_image_async
from .media import Media
from .ratelimit import RateLimiter
from .request import VideoRequest, build_request
from .store import JournalError, Submission, TaskStore, new_owner_id, open_store
from .tasks import Status, Task, hint_for, iso, parse_iso, utcnow
from .watcher import ChangeListener, Watcher, apply_response, remaining_seconds, settled

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LIST_WINDOW = timedelta(hours=24)
#: How far apart the sending of an ambiguous create and the creation of a listed task may be to be matched.
ADOPT_WITHIN = timedelta(minutes=2)
STALE_SECONDS = 5.0
NOT_OURS = "not created through this server: not journaled or downloaded"
RELISTED = "journaled again from DashScope's task list (the journal was rebuilt): its request is not known"
PROGRESS_EVERY = 4.0
#: Seconds between looks for submissions whose outcome is unknown (and tasks waiting to be journaled).
RECOVER_EVERY = 10.0
#: How long after its sending a submission with no task in DashScope's list is taken to have created none.
GIVE_UP_AFTER = timedelta(minutes=10)
DOWNLOAD_TIMEOUT = 300.0

#: Called while waiting: the task as it stands and the seconds waited so far.
ProgressListener = Callable[[Task, float], Awaitable[None]]


class ModelInfo(BaseModel):
    """The public description of a model (the contract's Model)."""

    name: str
    description: str
    resolutions: list[str]
    default_resolution: str
    durations: list[int]
    default_duration: int
    templates: list[str]
    max_prompt_chars: int
    max_negative_prompt_chars: int
    image_formats: list[str]
    image_min_side: int
    image_max_side: int
    image_max_bytes: int
    price_cny_per_second: dict[str, float | None] = Field(description="Beijing price by resolution; None: unpublished")
    rate_limit: RateLimit
    regions: list[str]
    aliases: dict[str, str]
    typical_generation_seconds: float
    recommended: bool
    images: list[str] = Field(description="its image arguments: image (first frame) and perhaps last_frame")
    arguments: dict[str, dict[str, Any]] = Field(
        description="every argument it takes besides image, model and fit_image, with its rules "
        "(choices, default, max_chars, minimum, maximum, needs, excludes; send=false: checked, not sent)"
    )

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelInfo:
        return cls(
            **spec.model_dump(include={
                "name", "description", "price_cny_per_second", "rate_limit", "regions", "aliases", "recommended",
            }),
            resolutions=list(spec.resolutions),
            default_resolution=spec.default_resolution,
            durations=list(spec.durations),
            default_duration=spec.default_duration,
            templates=list(spec.templates),
            max_prompt_chars=spec.max_prompt_chars,
            max_negative_prompt_chars=spec.max_negative_prompt_chars,
            images=list(spec.inputs),
            arguments={name: rule.model_dump(mode="json", exclude_defaults=True) for name, rule in spec.params.items()},
            image_formats=list(spec.image.formats),
            image_min_side=spec.image.min_side,
            image_max_side=spec.image.max_side,
            image_max_bytes=spec.image.max_bytes,
            typical_generation_seconds=spec.typical_seconds,
        )  # fmt: skip


def _new_task(
    request: VideoRequest,
    task_id: str,
    *,
    images: Mapping[str, str],
    created_at: str | None,
    status: Status = Status.PENDING,
    request_id: str | None = None,
    notes: Iterable[str] = (),
) -> Task:
    """The journal record of a task just created for ``request``."""
    return Task(
        **request.model_dump(include={"model", "prompt", "negative_prompt", "template", "resolution", "duration"}),
        **images,
        task_id=task_id,
        status=status,
        created_at=created_at,
        updated_at=created_at,
        request_id=request_id,
        estimated_cost_cny=request.estimated_cost_cny,
        notes=[*request.notes, *notes],
    )


def _listed_only(item: TaskListItem) -> Task:
    """A task of the account that this journal does not know, as DashScope's list describes it."""
    return Task(
        task_id=item.task_id,
        status=item.status,
        model=item.model_name or "",
        created_at=iso(_epoch_ms(item.gmt_create)),
        updated_at=iso(utcnow()),
        notes=[NOT_OURS],
    )


def _epoch_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def _same_model(a: str, b: str) -> bool:
    """Whether two model names (perhaps a region's spelling) name the same model."""
    try:
        return get_model(a).name == get_model(b).name
    except InvalidInput:
        return a == b


def _check_status(status: Status | str | None) -> Status | None:
    if status is None:
        return None
    try:
        return Status(str(status).upper())
    except ValueError:
        raise InvalidInput("status", status, "unknown status", valid=list(Status)) from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 500:
        raise InvalidInput("limit", limit, "must be between 1 and 500")


def _check_time(argument: str, value: datetime | str) -> datetime:
    """An aware time from a datetime or ISO 8601 text (without a zone: UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(argument, value, "is not an ISO 8601 time such as 2025-07-27T21:05:00Z") from None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00, which is before year 1 in UTC
        raise InvalidInput(argument, value.isoformat(), "is out of the representable range") from None


def check_task_id(task_id: str) -> str:
    task_id = task_id.strip()
    if not TASK_ID.fullmatch(task_id):
        raise InvalidInput("task_id", task_id, "is not a DashScope task id (letters, digits and '-', 8-128 long)")
    return task_id


class Wanx:
    """Submits and follows video tasks; open one with ``async with Wanx.open(settings) as wanx``."""

    def __init__(
        self,
        settings: Settings,
        client: DashScopeClient,
        store: TaskStore,
        watcher: Watcher,
        media: Media | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.watcher = watcher
        self.media = media or Media()
        #: Tasks created upstream whose journaling failed: task, journaled request, submission id.
        self._unjournaled: dict[str, tuple[Task, dict[str, Any], int]] = {}
        self._recover_soon = anyio.Event()  # set when there is something to recover now

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings | None = None,
        *,
        on_change: ChangeListener | None = None,
        client_options: Mapping[str, Any] | None = None,
        store: TaskStore | None = None,
    ) -> AsyncIterator[Wanx]:
        """Start everything (the simulator too in simulate mode) and stop it all on exit.

        ``client_options`` go to the :class:`DashScopeClient` constructor (``timeout``, ``backoff``...; without
        a ``limiter`` the client's rate limits live in the store, shared with every process using it).
        ``store``: an opened store to use instead of the one ``settings`` name (closed on exit all the same).
        """
        settings = settings or load_settings()
        redact.install()
        redact.register(settings.mcp_token)
        async with AsyncExitStack() as stack:
            store = store or await open_store(settings)  # first: it reports an unusable data folder clearly
            stack.push_async_callback(store.close)
            if settings.simulate:
                from .simulator import SimulatorConfig, running_simulator

                remembered = SimulatorConfig(
                    speed=settings.simulator_speed, state_path=settings.data_dir / "simulator.sqlite3"
                )
                sim = stack.enter_context(running_simulator(remembered))
                settings = settings.simulated(sim.base_url, sim.speed)
            owner = new_owner_id()
            limiter = RateLimiter(store=store, owner=owner, owner_ttl=settings.lease_ttl)
            tls = httpx.create_ssl_context()  # one for both clients
            options = {"limiter": limiter, "verify": tls, **(client_options or {})}
            client = await stack.enter_async_context(DashScopeClient.from_settings(settings, **options))
            downloads = await stack.enter_async_context(httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, verify=tls))
            media = Media()
            watcher = Watcher(
                client, store, settings, downloads, on_change=on_change, check_video=media.check_download,
                owner=owner, lease_ttl=settings.lease_ttl, renew_every=settings.lease_ttl / 3,
            )  # fmt: skip
            client.refresh_holders = watcher.refresh
            failure: BaseException | None = None
            async with anyio.create_task_group() as group:
                try:
                    await group.start(watcher.run)  # e.g. a damaged journal: its JournalError, not a group of it
                    wanx = cls(settings, client, store, watcher, media)
                    group.start_soon(wanx._recover_forever)
                    yield wanx
                except BaseException as exc:  # re-raised below, outside the group, so it is not wrapped
                    failure = exc
                finally:
                    group.cancel_scope.cancel()
            if failure is not None:
                raise failure

    async def _present(self, task: Task) -> Task:
        return task.model_copy(update={"hint": hint_for(task, await remaining_seconds(self.watcher, task))})

    async def _prepare(self, request: VideoRequest) -> dict[str, PreparedImage]:
        """Every image of ``request`` (first frame, last frame...) checked and made ready to send, by name."""
        prepared = {}
        for slot, source in request.images.items():
            try:
                prepared[slot] = await prepare_image_async(
                    source, request.spec.image, allowed_dirs=self.settings.allowed_dirs, fit=request.fit_image
                )
            except InvalidInput as exc:  # the image checks name the first frame
                raise InvalidInput(slot, exc.value, exc.rule, exc.valid, fixed_by=exc.fixed_by) from None
        return prepared

    async def _prepared_urls(self, request: VideoRequest) -> dict[str, str]:
        return {slot: image.img_url for slot, image in (await self._prepare(request)).items()}

    async def create(self, args: BaseModel | Mapping[str, Any]) -> Task:
        """Validate, prepare the image, submit, journal and start following; returns the PENDING task.

        If the journal cannot be written right after DashScope created the task, the task is kept in memory
        (journaled, followed and downloaded once writing works again) and ``JournalError`` names its id.
        """
        request = build_request(args)
        images = await self._prepare(request)
        described = {slot: image.description for slot, image in images.items()}
        changes = [note if slot == "image" else f"{slot}: {note}" for slot, image in images.items()
                   for note in image.changes]  # fmt: skip
        # a create may wait in the rate-limit queue: it keeps URLs, not data URIs made again when it is sent
        urls = ({slot: image.img_url for slot, image in images.items()}
                if all(image.source == "url" for image in images.values())
                else functools.partial(self._prepared_urls, request))  # fmt: skip
        del images
        journaled = request.model_dump(exclude=set(described)) | described
        submission, budget_notes = await self._record_submission(request, journaled)
        changes += budget_notes
        try:
            response = await self.client.create_task(request, urls)
        except WanxError as exc:
            outcome = "ambiguous" if exc.code == "AmbiguousCreate" else "failed"
            await self.store.finish_submission(submission, outcome, error=str(exc))
            raise
        now = iso(utcnow())
        task = _new_task(
            request, response.output.task_id, images=described, created_at=now,
            status=Status(response.output.task_status), request_id=response.request_id, notes=changes,
        )  # fmt: skip
        try:
            await self._journal_created(task, journaled, submission)
        except JournalError as exc:
            self._unjournaled[task.task_id] = (task, journaled, submission)
            self._recover_soon.set()
            log.error("task %s created but not journaled: %s", task.task_id, exc)
            raise JournalError(
                f"JournalError: task {task.task_id} was created upstream but could not be journaled ({exc}). It is "
                "kept in memory and will be journaled, followed and downloaded as soon as the journal can be "
                f"written again. Do not resubmit (that pays twice): call get_task(task_id='{task.task_id}') later."
            ) from exc
        return await self._present(task)

    async def _record_submission(self, request: VideoRequest, journaled: dict[str, Any]) -> tuple[int, list[str]]:
        """Journal the submission about to be sent; with ``WANX_BUDGET_CNY``, only if it fits the budget (else
        BudgetExceeded, nothing written). Returns its id and the notes the task gets about how it was counted."""
        cost, conservative = budget_price(request.spec, request.resolution, request.duration)
        budget = self.settings.budget_cny
        if budget is None:
            submission = await self.store.record_submission(
                request.model, journaled, owner=self.watcher.owner, estimated_cost_cny=cost
            )
            return submission, []
        submission = await self.store.reserve_submission(
            request.model, journaled, owner=self.watcher.owner, estimated_cost_cny=cost, budget=budget
        )
        if not conservative:
            return submission, []
        return submission, [f"counted as {cost:g} CNY against WANX_BUDGET_CNY: {request.model}'s price is unpublished, "
                            f"so the highest published price of a {request.resolution} {request.duration} s video"]

    async def _journal_created(self, task: Task, journaled: dict[str, Any], submission: int) -> None:
        await self.watcher.claim(task.task_id)
        await self.store.insert_task(task, journaled)
        await self.store.finish_submission(submission, "created", task_id=task.task_id)
        self.watcher.follow(task)
        if self.watcher.on_change is not None:
            await self.watcher.on_change(task)

    async def get(self, task_id: str, wait_seconds: float = 0, progress: ProgressListener | None = None) -> Task:
        """The task from the journal (refreshed when stale), after waiting up to ``wait_seconds`` for it."""
        task_id = check_task_id(task_id)
        if wait_seconds < 0:
            raise InvalidInput("wait_seconds", wait_seconds, "must not be negative")
        record = await self.store.record(task_id)
        if record is None:
            if task_id in self._unjournaled:
                return await self._present(self._unjournaled[task_id][0])
            return await self._upstream_only(task_id)
        task = record.task
        if not task.is_final or (task.status is Status.SUCCEEDED and not task.video_path):
            self.watcher.follow(task)
        if wait_seconds > 0:
            return await self.wait(task_id, wait_seconds, progress)
        checked = parse_iso(task.updated_at)
        stale = checked is None or (utcnow() - checked).total_seconds() > STALE_SECONDS
        if not task.is_final and stale and self.watcher.poke(task_id):
            await self.store.wait_for_change(task_id, record.version, STALE_SECONDS)
        return await self._present(await self.store.get(task_id) or task)

    async def _upstream_only(self, task_id: str) -> Task:
        """A task this journal never saw: DashScope's answer, not journaled."""
        response = await self.client.get_task(task_id)
        unseen = Task(task_id=task_id, status=Status.PENDING, model="", notes=[NOT_OURS])
        return await self._present(apply_response(unseen, response)[0])

    async def wait(self, task_id: str, wait_seconds: float, progress: ProgressListener | None = None) -> Task:
        """Wait until the task is final (and its video downloaded) or ``wait_seconds`` pass, whichever process
        follows it."""
        deadline = anyio.current_time() + wait_seconds
        started = anyio.current_time()
        record = await self.store.record(task_id)
        if record is None:
            if task_id in self._unjournaled:
                return await self._present(self._unjournaled[task_id][0])
            raise InvalidInput("task_id", task_id, "is not in the journal")
        task, version = record.task, record.version
        while self.watcher.is_following(task_id) or not settled(task, self.settings.download):
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            version = await self.store.wait_for_change(task_id, version, min(left, PROGRESS_EVERY))
            task = await self.store.get(task_id) or task
            if progress is not None:
                await progress(await self._present(task), anyio.current_time() - started)
        return await self._present(task)

    async def generate(
        self, args: BaseModel | Mapping[str, Any], wait_seconds: float, progress: ProgressListener | None = None
    ) -> Task:
        """Create a task and wait for it (bounded by ``wait_seconds``)."""
        task = await self.create(args)
        if progress is not None:
            await progress(task, 0.0)
        return await self.wait(task.task_id, wait_seconds, progress)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a PENDING task (DashScope refuses others with UnsupportedOperation)."""
        task_id = check_task_id(task_id)
        await self.client.cancel_task(task_id)
        record = await self.store.record(task_id)
        if record is None:
            return await self._upstream_only(task_id)
        if self.watcher.poke(task_id):
            await self.store.wait_for_change(task_id, record.version, STALE_SECONDS)
        return await self.get(task_id)

    async def list(self, status: Status | str | None = None, limit: int = 20) -> list[Task]:
        """Recent tasks from the journal, newest first."""
        status = _check_status(status)
        _check_limit(limit)
        return [await self._present(task) for task in await self.store.list_tasks(status, limit)]

    async def find(
        self,
        start_time: datetime | str | None = None,
        model_name: str | None = None,
        status: Status | str | None = None,
        limit: int = 20,
    ) -> list[Task]:
        """The account's tasks as DashScope lists them, created from ``start_time`` (default: 24 h ago) for
        at most 24 h, newest first: journaled ones as journaled, others as DashScope describes them.

        This is how the task of an ``AmbiguousCreate`` is found: one of ``model_name`` created within
        ``ADOPT_WITHIN`` of such a submission's sending is journaled as its task, followed and downloaded (the
        server also does this by itself within a minute, see :meth:`recover`).
        """
        status = _check_status(status)
        _check_limit(limit)
        end = utcnow() + timedelta(seconds=1)  # DashScope's times are whole seconds: include this one
        start = _check_time("start_time", start_time) if start_time is not None else end - LIST_WINDOW
        if start >= end:
            raise InvalidInput("start_time", iso(start), "is in the future")
        upstream_model = model_name
        if model_name and not MODEL_NAME.fullmatch(model_name):  # it goes into the URL's query
            raise InvalidInput("model_name", model_name, "is not a model name", valid=[m.name for m in MODELS])
        if model_name:
            with contextlib.suppress(InvalidInput):  # not in the catalog: ask DashScope all the same
                upstream_model = get_model(model_name).name_in(self.client.region)
        page = await self.client.list_tasks(
            start_time=start, end_time=min(start + LIST_WINDOW, end), model_name=upstream_model, status=status,
            page_size=limit,
        )  # fmt: skip
        unclaimed = await self.store.unresolved_submissions(time.time())
        tasks = []
        for item in page.data:
            task = await self.store.get(item.task_id) or await self._adopt(item, unclaimed) or _listed_only(item)
            tasks.append(await self._present(task))
        return tasks

    async def relist(self) -> list[Task]:
        """Journal the account's tasks of the last 24 hours (up to 100, from DashScope's task list) that the journal
        lacks, each as DashScope answers for it now, and follow them (a new journal after a damaged one was set
        aside: their videos are downloaded while the links last). Returns the tasks journaled."""
        end = utcnow() + timedelta(seconds=1)
        page = await self.client.list_tasks(start_time=end - LIST_WINDOW, end_time=end, page_size=100)
        journaled = []
        for item in page.data:
            if not TASK_ID.fullmatch(item.task_id) or await self.store.get(item.task_id) is not None:
                continue
            listed = _listed_only(item).model_copy(update={"notes": [RELISTED]})
            try:
                task = apply_response(listed, await self.client.get_task(item.task_id))[0]
            except DashScopeError as exc:  # gone meanwhile, or a passing failure: as listed, the watcher asks again
                log.warning("could not ask DashScope about listed task %s: %s", item.task_id, exc.code)
                task = listed
            if await self.watcher.claim(task.task_id) and await self.store.insert_task(task, {}):
                self.watcher.follow(task)
                journaled.append(task)
        return journaled

    async def recover(self) -> None:
        """Journal the tasks kept in memory, then look for the task of every submission whose outcome is unknown
        (ambiguous, or sent by a process that died) in DashScope's list around its sending, and adopt it."""
        for task, journaled, submission in list(self._unjournaled.values()):
            await self._journal_created(task, journaled, submission)
            del self._unjournaled[task.task_id]
            log.warning("task %s is journaled now that the journal can be written again", task.task_id)
        for submission in await self.store.unresolved_submissions(time.time()):
            sent = parse_iso(submission.sent_at)
            if sent is None:
                continue
            try:
                upstream_model = get_model(submission.model).name_in(self.client.region)
            except InvalidInput:
                upstream_model = submission.model
            now = utcnow()
            page = await self.client.list_tasks(
                start_time=sent - ADOPT_WITHIN, end_time=min(sent + ADOPT_WITHIN, now + timedelta(seconds=1)),
                model_name=upstream_model, page_size=100,
            )  # fmt: skip
            for item in page.data:
                if await self.store.get(item.task_id) is None and await self._adopt(item, [submission]):
                    break
            else:
                if now - sent > GIVE_UP_AFTER:
                    error = f"no task of it in DashScope's list {GIVE_UP_AFTER} after its sending"
                    await self.store.finish_submission(submission.id, "failed", error=error)

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self.recover()
            except WanxError as exc:
                log.warning("recovery of unresolved submissions failed (will retry): %s", exc)
            if self._unjournaled:
                await anyio.sleep(1.0)
                continue
            with anyio.move_on_after(RECOVER_EVERY):
                await self._recover_soon.wait()
            self._recover_soon = anyio.Event()

    async def _adopt(self, item: TaskListItem, unclaimed: list[Submission]) -> Task | None:
        """Journal and follow ``item`` as the task of the nearest unresolved submission it can be, if any."""
        created = _epoch_ms(item.gmt_create)
        if created is None or not item.model_name:
            return None
        listed_prompt = (item.model_extra or {}).get("orig_prompt")
        matches = [
            (abs(sent - created), submission)
            for submission in unclaimed
            if (sent := parse_iso(submission.sent_at)) and abs(sent - created) <= ADOPT_WITHIN
            and _same_model(submission.model, item.model_name)
            and (not listed_prompt or listed_prompt == submission.request.get("prompt"))
        ]  # fmt: skip
        if not matches:
            return None
        submission = min(matches, key=lambda match: match[0])[1]
        request = VideoRequest.model_validate(submission.request)
        note = "found in DashScope's task list after the answer to its submission was lost"
        task = _new_task(request, item.task_id, images=request.images, created_at=iso(created), notes=[note])
        task, _ = apply_response(task, await self.client.get_task(item.task_id))
        claimed = await self.watcher.claim(item.task_id)
        if not await self.store.adopt(submission.id, task, submission.request):
            if claimed:  # another process adopted it: its watcher follows it
                await self.store.release_lease(item.task_id, self.watcher.owner)
            return await self.store.get(item.task_id)
        unclaimed.remove(submission)
        log.warning("task %s is the one submission %d created; following it", item.task_id, submission.id)
        self.watcher.follow(task)
        if self.watcher.on_change is not None:
            await self.watcher.on_change(task)
        return task

    @staticmethod
    def models() -> list[ModelInfo]:
        return [ModelInfo.of(spec) for spec in MODELS]
