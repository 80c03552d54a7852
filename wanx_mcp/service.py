"""The wanx library in one object: submit, follow, wait for, cancel and list video tasks (no MCP needed)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, Field

from .catalog import MODELS, ModelSpec, RateLimit
from .config import Settings, load_settings
from .dashscope import DashScopeClient
from .errors import DashScopeError, InvalidInput
from .images import prepare_image_async
from .journal import Journal
from .request import GenerationArgs, build_request
from .tasks import Status, Task, hint_for, iso, parse_iso, utcnow
from .watcher import ChangeListener, Watcher, remaining_seconds

TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{7,127}$")
STALE_SECONDS = 5.0
PROGRESS_EVERY = 4.0
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

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelInfo:
        return cls(
            **spec.model_dump(include={
                "name", "description", "resolutions", "default_resolution", "durations", "default_duration",
                "templates", "max_prompt_chars", "max_negative_prompt_chars", "price_cny_per_second",
                "rate_limit", "regions", "aliases", "recommended",
            }),
            image_formats=list(spec.image.formats),
            image_min_side=spec.image.min_side,
            image_max_side=spec.image.max_side,
            image_max_bytes=spec.image.max_bytes,
            typical_generation_seconds=spec.typical_seconds,
        )  # fmt: skip


def check_task_id(task_id: str) -> str:
    task_id = task_id.strip()
    if not TASK_ID.fullmatch(task_id):
        raise InvalidInput("task_id", task_id, "is not a DashScope task id (letters, digits and '-', 8-128 long)")
    return task_id


class Wanx:
    """Submits and follows video tasks; open one with ``async with Wanx.open(settings) as wanx``."""

    def __init__(self, settings: Settings, client: DashScopeClient, journal: Journal, watcher: Watcher) -> None:
        self.settings = settings
        self.client = client
        self.journal = journal
        self.watcher = watcher

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings | None = None, *, on_change: ChangeListener | None = None
    ) -> AsyncIterator[Wanx]:
        """Start everything (the simulator too in simulate mode) and stop it all on exit."""
        settings = settings or load_settings()
        async with AsyncExitStack() as stack:
            if settings.simulate:
                from .simulator import SimulatorConfig, running_simulator

                sim = stack.enter_context(running_simulator(SimulatorConfig(speed=settings.simulator_speed)))
                settings = settings.simulated(sim.base_url, sim.speed)
            journal = Journal(settings.journal_path)
            stack.callback(journal.close)
            client = await stack.enter_async_context(DashScopeClient.from_settings(settings))
            downloads = await stack.enter_async_context(httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT))
            watcher = Watcher(client, journal, settings, downloads, on_change=on_change)
            failure: BaseException | None = None
            async with anyio.create_task_group() as group:
                await group.start(watcher.run)
                try:
                    yield cls(settings, client, journal, watcher)
                except BaseException as exc:  # re-raised below, outside the group, so it is not wrapped
                    failure = exc
                finally:
                    group.cancel_scope.cancel()
            if failure is not None:
                raise failure

    def _present(self, task: Task) -> Task:
        return task.model_copy(update={"hint": hint_for(task, remaining_seconds(self.watcher, task))})

    async def create(self, args: GenerationArgs | dict[str, Any]) -> Task:
        """Validate, prepare the image, submit, journal and start following; returns the PENDING task."""
        request = build_request(args)
        image = await prepare_image_async(
            request.image, request.spec.image, allowed_dirs=self.settings.allowed_dirs, fit=request.fit_image
        )
        journaled = request.model_dump(exclude={"image"}) | {"image": image.description}
        submission = self.journal.record_submission(request.model, journaled)
        try:
            response = await self.client.create_task(request, image.img_url)
        except DashScopeError as exc:
            outcome = "ambiguous" if exc.code == "AmbiguousCreate" else "failed"
            self.journal.finish_submission(submission, outcome, error=str(exc))
            raise
        now = iso(utcnow())
        task = Task(
            task_id=response.output.task_id,
            status=Status(response.output.task_status),
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            template=request.template,
            resolution=request.resolution,
            duration=request.duration,
            image=image.description,
            created_at=now,
            updated_at=now,
            request_id=response.request_id,
            estimated_cost_cny=request.estimated_cost_cny,
            notes=[*request.notes, *image.changes],
        )
        self.journal.insert(task, journaled)
        self.journal.finish_submission(submission, "created", task_id=task.task_id)
        self.watcher.follow(task)
        if self.watcher.on_change is not None:
            await self.watcher.on_change(task)
        return self._present(task)

    async def get(self, task_id: str, wait_seconds: float = 0, progress: ProgressListener | None = None) -> Task:
        """The task from the journal (refreshed when stale), after waiting up to ``wait_seconds`` for it."""
        task_id = check_task_id(task_id)
        if wait_seconds < 0:
            raise InvalidInput("wait_seconds", wait_seconds, "must not be negative")
        task = self.journal.get(task_id)
        if task is None:
            return await self._upstream_only(task_id)
        if not task.is_final or (task.status is Status.SUCCEEDED and not task.video_path):
            self.watcher.follow(task)
        if wait_seconds > 0:
            return await self.wait(task_id, wait_seconds, progress)
        checked = parse_iso(task.updated_at)
        if not task.is_final and (checked is None or (utcnow() - checked).total_seconds() > STALE_SECONDS):
            self.watcher.poke(task_id)
            await self.watcher.changed(task_id, STALE_SECONDS)
        return self._present(self.journal.get(task_id) or task)

    async def _upstream_only(self, task_id: str) -> Task:
        """A task this journal never saw: DashScope's answer, not journaled."""
        response = await self.client.get_task(task_id)
        out = response.output
        task = Task(
            task_id=task_id,
            status=Status(out.task_status),
            model="",
            video_url=out.video_url,
            orig_prompt=out.orig_prompt,
            actual_prompt=out.actual_prompt,
            usage=response.usage,
            error_code=out.code,
            error_message=out.message,
            request_id=response.request_id,
            updated_at=iso(utcnow()),
            notes=["not created through this server: not journaled or downloaded"],
        )
        return self._present(task)

    async def wait(self, task_id: str, wait_seconds: float, progress: ProgressListener | None = None) -> Task:
        """Wait until the task is final (and its video downloaded) or ``wait_seconds`` pass."""
        deadline = anyio.current_time() + wait_seconds
        started = anyio.current_time()
        while self.watcher.is_following(task_id):
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            await self.watcher.changed(task_id, min(left, PROGRESS_EVERY))
            if progress is not None:
                current = self.journal.get(task_id)
                if current is not None:
                    await progress(self._present(current), anyio.current_time() - started)
        task = self.journal.get(task_id)
        if task is None:
            raise InvalidInput("task_id", task_id, "is not in the journal")
        return self._present(task)

    async def generate(
        self, args: GenerationArgs | dict[str, Any], wait_seconds: float, progress: ProgressListener | None = None
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
        if self.journal.get(task_id) is None:
            return await self._upstream_only(task_id)
        self.watcher.poke(task_id)
        await self.watcher.changed(task_id, STALE_SECONDS)
        return await self.get(task_id)

    def list(self, status: Status | str | None = None, limit: int = 20) -> list[Task]:
        """Recent tasks from the journal, newest first."""
        if status is not None:
            try:
                status = Status(str(status).upper())
            except ValueError:
                raise InvalidInput("status", status, "unknown status", valid=list(Status)) from None
        if not 1 <= limit <= 500:
            raise InvalidInput("limit", limit, "must be between 1 and 500")
        return [self._present(task) for task in self.journal.list(status, limit)]

    @staticmethod
    def models() -> list[ModelInfo]:
        return [ModelInfo.of(spec) for spec in MODELS]
