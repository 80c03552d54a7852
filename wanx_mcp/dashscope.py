"""Async client for DashScope's Wan image-to-video API: typed replies, safe retries, local rate limiting.

Every failure becomes a :class:`~wanx_mcp.errors.DashScopeError`. Reads (status, list) and cancel are
retried on connection errors, timeouts, 429 and 5xx. A create is re-sent only when it provably created no
task; when that is unknowable it raises :class:`AmbiguousCreate` instead of risking a second paid task.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from . import __version__, redact
from .config import Settings
from .errors import DashScopeError, InvalidInput, MissingApiKey
from .ratelimit import RateLimiter, Refresh
from .request import VideoRequest
from .tasks import Status

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_LIST_WINDOW = timedelta(hours=24)
LIST_TIME_FORMAT = "%Y%m%d%H%M%S"
#: The zone DashScope's task times are in: China Standard Time (unverified; the docs state none).
API_TIMEZONE = timezone(timedelta(hours=8), "UTC+08:00")
# failures raised before any byte of the request is written
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
#: Names this process, so that the requests of several processes on one account can be told apart.
USER_AGENT = f"wanx-mcp/{__version__} (pid {os.getpid()})"
#: DashScope's task ids are UUIDs; anything of this shape is safe in a path, a URL and a log line.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{7,127}")


def _task_id(value: str) -> str:
    """An upstream task id, refused unless it has the shape of one (it becomes a file name and a URL path)."""
    if not TASK_ID.fullmatch(value):
        raise ValueError("not a task id")
    return value


TaskId = Annotated[str, AfterValidator(_task_id)]


class TaskOutput(BaseModel):
    """``output`` of a create or status reply; ``code``/``message`` explain a FAILED task."""

    model_config = ConfigDict(extra="allow")

    task_id: TaskId
    task_status: Status
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    video_url: str | None = None
    orig_prompt: str | None = None
    actual_prompt: str | None = None
    code: str | None = None
    message: str | None = None


class TaskResponse(BaseModel):
    """A create or status reply."""

    model_config = ConfigDict(extra="allow")

    request_id: str | None = None
    output: TaskOutput
    usage: dict[str, Any] | None = None


class TaskListItem(BaseModel):
    """One task in a list page (``gmt_create`` in epoch milliseconds)."""

    model_config = ConfigDict(extra="allow")

    task_id: TaskId
    status: Status
    model_name: str | None = None
    gmt_create: int | None = None
    start_time: int | str | None = None
    region: str | None = None


class TaskListPage(BaseModel):
    """A page of ``GET /tasks/``."""

    model_config = ConfigDict(extra="allow")

    total: int
    total_page: int = 1
    page_no: int = 1
    page_size: int = 10
    request_id: str | None = None
    data: list[TaskListItem]

    @field_validator("data", mode="before")
    @classmethod
    def _drop_bad_ids(cls, items: Any) -> Any:
        """Leave out listed tasks whose id is not one (logged without it), not the whole page."""
        if not isinstance(items, list):
            return items
        kept = [i for i in items if not isinstance(i, dict) or TASK_ID.fullmatch(str(i.get("task_id", "")))]
        if len(kept) < len(items):
            log.warning("the task list holds %d entries without a valid task id; left out", len(items) - len(kept))
        return kept


class _CancelReply(BaseModel):
    request_id: str


class AmbiguousCreate(DashScopeError):
    """A create was sent but its fate is unknown: a (paid) task may exist. Find it before submitting again."""

    def __init__(self, cause: DashScopeError, *, sent_at: datetime, model: str) -> None:
        self.sent_at = sent_at
        self.model = model
        self.cause = cause
        since = (sent_at - timedelta(minutes=1)).isoformat(timespec="seconds")
        super().__init__(
            "AmbiguousCreate",
            f"the create request for {model} was sent at {sent_at:%Y-%m-%d %H:%M:%S} UTC and then failed "
            f"({cause.code}: {cause.message}); a task may exist: look for it with "
            f"list_tasks(start_time={since!r}, model_name={model!r})",
            status=cause.status,
            request_id=cause.request_id,
        )


M = TypeVar("M", bound=BaseModel)
Verdict = Literal["retry", "ambiguous", "final"]
Rand = Callable[[], float]


class _Failure(Exception):
    """One failed attempt, with what the retry policies need to know about it."""

    def __init__(
        self,
        error: DashScopeError,
        *,
        sent_at: datetime,
        sent: bool = True,
        api_error: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent_at = sent_at
        self.sent = sent  # False: provably nothing reached the server
        self.api_error = api_error  # DashScope itself answered with its JSON error body
        self.retry_after = retry_after


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None = None, rand: Rand = random.random
) -> float:
    """Seconds before retry number ``attempt`` (0-based): ``Retry-After`` if given, else exponential with
    equal jitter (between half and all of ``base * 2**attempt``); never more than ``cap``."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(base * 2**attempt, cap)
    return ceiling / 2 + rand() * ceiling / 2


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _snippet(text: str, limit: int = 120) -> str:
    """A short, tag-free excerpt of a non-JSON body for an error message."""
    plain = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return plain if len(plain) <= limit else plain[: limit - 3] + "..."


def _create_verdict(failure: _Failure) -> Verdict:
    """Whether a failed create may be re-sent: only if it provably created no task."""
    status = failure.error.status
    if not failure.sent or status == 429 or (status is not None and status >= 500 and failure.api_error):
        return "retry"
    if status is None or status >= 500 or status < 400:
        return "ambiguous"
    return "final"


def _read_verdict(failure: _Failure) -> Verdict:
    return "retry" if failure.error.retryable else "final"


def _api_time(moment: datetime) -> datetime:
    """A naive time in DashScope's zone: aware times are converted, naive ones taken as already in it."""
    return moment if moment.tzinfo is None else moment.astimezone(API_TIMEZONE).replace(tzinfo=None)


def _list_time(moment: datetime) -> str:
    """``moment`` in ``LIST_TIME_FORMAT``, the year always in four digits (glibc's ``%Y`` has no leading zeros)."""
    return f"{moment.year:04d}{moment:%m%d%H%M%S}"


#: Prepared images: the first frame's URL alone, or by argument name (``image``, ``last_frame``...).
Images = str | Mapping[str, str]


def _create_headers(images: Images) -> dict[str, str]:
    """Async mode always; ``oss://`` images (SDK-uploaded temporary files) must be resolved by DashScope."""
    headers = {"X-DashScope-Async": "enable"}
    urls = [images] if isinstance(images, str) else images.values()
    if any(url.startswith("oss://") for url in urls):
        headers["X-DashScope-OssResourceResolve"] = "enable"
    return headers


class DashScopeClient:
    """DashScope's task API on one ``httpx.AsyncClient``; use as ``async with`` or call :meth:`aclose`.

    ``limiter`` is shared by every client given the same one; without it the client makes its own.
    ``backoff`` is the first retry delay in seconds, doubled each retry up to ``max_backoff``. ``verify``: the
    TLS context (sharing one saves loading the CA certificates again, about 50 ms).
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        *,
        region: str = "beijing",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._api_key = api_key or None
        redact.register(api_key)
        self.base_url = base_url.rstrip("/")
        self.region = region
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._own_limiter = limiter is None
        #: How a create kept waiting for a slot refreshes the tasks holding them. A watcher that polls those
        #: tasks anyway puts its own here, so that they are not asked about twice.
        self.refresh_holders: Refresh = self._refresh
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"User-Agent": USER_AGENT} | ({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            timeout=timeout,
            transport=transport,
            verify=verify,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> DashScopeClient:
        """A client for ``settings``' key, region and base URL; ``kwargs`` go to the constructor."""
        return cls(settings.api_key, settings.base_url, region=settings.region, **kwargs)

    def __repr__(self) -> str:
        return f"DashScopeClient(base_url={self.base_url!r}, region={self.region!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._own_limiter:
            await self.limiter.aclose()

    async def create_task(
        self, request: VideoRequest, images: Images | Callable[[], Awaitable[Images]]
    ) -> TaskResponse:
        """Submit ``request`` with its prepared ``images`` to its model's endpoint; returns the PENDING task.

        Waits first for a running-task slot and a submission of the model's rate-limit family. ``images`` may
        be a coroutine function producing them once the slot is there, so a queued create holds no large data URI.
        """
        model, family = request.spec.name_in(self.region), request.spec.rate_limit.family
        slot = await self.limiter.acquire(family, refresh=self.refresh_holders)
        sending = False

        async def pace() -> None:
            nonlocal sending
            await self.limiter.pace(family)
            sending = True

        try:
            prepared = await images() if callable(images) else images
            reply = await self._request(
                "POST", request.spec.endpoint, TaskResponse, _create_verdict,
                json=request.payload(prepared, self.region), headers=_create_headers(prepared), before_attempt=pace,
            )  # fmt: skip
        except _Failure as failure:
            if _create_verdict(failure) == "ambiguous":
                await slot.hold()
                error: DashScopeError = AmbiguousCreate(failure.error, sent_at=failure.sent_at, model=model)
                log.warning("%s", error.message)
            else:
                await slot.release()
                error = failure.error
            raise error from failure.__cause__
        except BaseException as exc:  # cancelled (or worse): once sending began, a task may exist
            log.warning("create for %s interrupted (%s); sent: %s", model, type(exc).__name__, sending)
            with anyio.CancelScope(shield=True):
                await (slot.hold() if sending else slot.release())
            raise
        await slot.assign(reply.output.task_id)
        log.info("created task %s (%s, request_id=%s)", reply.output.task_id, model, reply.request_id)
        return reply

    async def get_task(self, task_id: str) -> TaskResponse:
        """The task's current status and, once SUCCEEDED, its video URL; frees its slot at a final status."""
        reply = await self._read("GET", f"tasks/{self._quote(task_id)}", TaskResponse)
        status = reply.output.task_status
        log.debug("task %s is %s", task_id, status)
        if status.is_final:
            await self.limiter.release(task_id)
        return reply

    async def cancel_task(self, task_id: str) -> str:
        """Cancel a PENDING task; returns the request_id. Other statuses raise ``UnsupportedOperation``."""
        path = f"tasks/{self._quote(task_id)}/cancel"
        retried = False

        def verdict(failure: _Failure) -> Verdict:
            nonlocal retried
            retried = retried or failure.error.retryable
            return _read_verdict(failure)

        try:
            reply = await self._request("POST", path, _CancelReply, verdict)
        except _Failure as failure:
            if not (retried and failure.error.code == "UnsupportedOperation"):
                raise failure.error from failure.__cause__
            # an earlier attempt whose answer was lost may have cancelled it already
            state = await self.get_task(task_id)
            if state.output.task_status != Status.CANCELED:
                raise failure.error from failure.__cause__
            return state.request_id or ""
        await self.limiter.release(task_id)
        log.info("cancelled task %s", task_id)
        return reply.request_id

    async def list_tasks(
        self,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        model_name: str | None = None,
        status: Status | str | None = None,
        task_id: str | None = None,
        page_no: int = 1,
        page_size: int = 10,
    ) -> TaskListPage:
        """Tasks of the account. Prefer aware times: naive ones are taken as DashScope's zone (UTC+8)."""
        start_time = start_time and _api_time(start_time)
        end_time = end_time and _api_time(end_time)
        if start_time and end_time:
            window = end_time - start_time
            if window < timedelta(0):
                raise InvalidInput("end_time", end_time.isoformat(), "must not be before start_time")
            if window > MAX_LIST_WINDOW:
                raise InvalidInput("end_time", end_time.isoformat(), "must be within 24 hours of start_time")
        if page_no < 1:
            raise InvalidInput("page_no", page_no, "must be at least 1")
        if page_size < 1:
            raise InvalidInput("page_size", page_size, "must be at least 1")
        params: dict[str, str | int] = {"page_no": page_no, "page_size": page_size}
        if start_time:
            params["start_time"] = _list_time(start_time)
        if end_time:
            params["end_time"] = _list_time(end_time)
        for name, value in (("model_name", model_name), ("status", status), ("task_id", task_id)):
            if value:
                params[name] = str(value)
        return await self._read("GET", "tasks/", TaskListPage, params=params)

    async def _refresh(self, task_ids: list[str]) -> None:
        """Check tasks holding rate-limit slots; get_task frees the finished ones."""
        for task_id in task_ids:
            try:
                await self.get_task(task_id)
            except DashScopeError as exc:
                log.warning("could not refresh task %s: %s", task_id, exc.code)

    @staticmethod
    def _quote(task_id: str) -> str:
        if not task_id or not task_id.strip():
            raise InvalidInput("task_id", task_id, "must not be empty")
        return quote(task_id, safe="")

    async def _read(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        try:
            return await self._request(method, path, model, _read_verdict, **kwargs)
        except _Failure as failure:
            raise failure.error from failure.__cause__

    async def _request(
        self,
        method: str,
        path: str,
        model: type[M],
        verdict: Callable[[_Failure], Verdict],
        *,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> M:
        """Send until an attempt succeeds or ``verdict`` says not to retry (then raise its _Failure)."""
        if self._api_key is None:
            raise MissingApiKey()
        attempt = 0
        while True:
            if before_attempt is not None:
                await before_attempt()
            try:
                return await self._attempt(method, path, model, **kwargs)
            except _Failure as failure:
                if attempt >= self.max_retries or verdict(failure) != "retry":
                    raise
                delay = backoff_delay(attempt, self.backoff, self.max_backoff, failure.retry_after)
                attempt += 1
                log.warning(
                    "%s %s failed (%s); retry %d/%d in %.2f s",
                    method, path, failure.error.code, attempt, self.max_retries, delay,
                )  # fmt: skip
                await anyio.sleep(delay)

    async def _attempt(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        sent_at = datetime.now(UTC)
        started = time.monotonic()
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            log.debug("%s %s: %s after %.3f s", method, path, type(exc).__name__, time.monotonic() - started)
            raise self._transport_failure(exc, sent_at) from exc
        log.debug("%s %s -> %d in %.3f s", method, path, response.status_code, time.monotonic() - started)
        body = redact.scrub_tree(self._json(response))
        if response.is_success and isinstance(body, dict):
            try:
                return model.model_validate(body)
            except ValidationError as exc:
                wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
                message = f"HTTP {response.status_code} reply without the expected fields ({wrong})"
                error = DashScopeError("BadResponse", message, status=response.status_code,
                                       request_id=body.get("request_id"))  # fmt: skip
                raise _Failure(error, sent_at=sent_at) from None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            error = DashScopeError(
                body["code"], redact.scrub(str(body.get("message") or "")),
                status=response.status_code, request_id=body.get("request_id"),
            )  # fmt: skip
            raise _Failure(error, sent_at=sent_at, api_error=True, retry_after=retry_after)
        text = _snippet(redact.scrub(response.text)) or "(empty body)"
        error = DashScopeError("BadResponse", f"not a DashScope reply: {text}", status=response.status_code)
        raise _Failure(error, sent_at=sent_at, retry_after=retry_after)

    def _transport_failure(self, exc: httpx.RequestError, sent_at: datetime) -> _Failure:
        detail = redact.scrub(str(exc)) or type(exc).__name__
        code = "RequestTimeOut" if isinstance(exc, httpx.TimeoutException) else "ConnectionError"
        error = DashScopeError(code, f"{type(exc).__name__}: {detail}")
        return _Failure(error, sent_at=sent_at, sent=not isinstance(exc, _UNSENT))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None
