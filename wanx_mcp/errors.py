"""The two kinds of failure a caller sees: input we refused, and errors DashScope reported."""

from __future__ import annotations

from collections.abc import Iterable

#: One-sentence advice for DashScope error codes, shown to people and agents.
HINTS: dict[str, str] = {
    "InvalidApiKey": (
        "Check that DASHSCOPE_API_KEY is right and matches the region: keys are per region, and "
        "Singapore keys need WANX_REGION=singapore (Virginia: WANX_REGION=virginia)."
    ),
    "InvalidParameter": "Fix the argument named in the message and submit again.",
    "InvalidParameter.DataInspection": "The input image or prompt was refused by moderation; use another one.",
    "DataInspectionFailed": (
        "Content moderation rejected the image, prompt or generated video; change the image or prompt "
        "and submit again (failed tasks are not billed)."
    ),
    "IPInfringementSuspect": "The input looks like protected intellectual property; use another image or prompt.",
    "InvalidURL": "The image URL could not be fetched by DashScope; use a public http(s) URL or a local file.",
    "Arrearage": "The Alibaba Cloud account is in arrears; top it up in the console.",
    "UnsupportedOperation": "Only PENDING tasks can be cancelled; a running task cannot be stopped.",
    "AccessDenied": "The key has no access to this model or region.",
    "AccessDenied.Unpurchased": "Activate the model (or Model Studio) in the Alibaba Cloud console first.",
    "RequestTimeOut": "DashScope timed out; try again shortly.",
    "Throttling": "Too many requests; wait a few seconds and try again.",
    "Throttling.RateQuota": "Rate limit reached (submissions per second); wait a moment and try again.",
    "Throttling.AllocationQuota": "Concurrent-task quota reached; wait for running tasks to finish.",
    "InternalError": "DashScope had an internal error; try again shortly.",
    "InternalError.Algo": "The generation failed inside DashScope; try again, perhaps with another prompt.",
    "BadResponse": "DashScope (or a proxy in between) answered with something that is not its JSON; try again.",
    "ConnectionError": "DashScope could not be reached; check the network and DASHSCOPE_HTTP_BASE_URL.",
    "AmbiguousCreate": (
        "The submission may or may not have created a (paid) task: look for it with list_tasks "
        "before submitting again."
    ),
}


#: How much of a rejected text value an error message repeats (whole paths, not whole prompts or data URIs).
SHOWN_CHARS = 300


class WanxError(Exception):
    """Base of every error this package raises on purpose; ``code`` leads its message."""

    code: str = "WanxError"

    @property
    def hint(self) -> str | None:
        return HINTS.get(self.code)


class InvalidInput(WanxError):
    """An argument broke a documented rule; nothing was sent upstream."""

    code = "InvalidInput"

    def __init__(self, argument: str, value: object, rule: str, valid: Iterable[object] | None = None) -> None:
        self.argument = argument
        self.value = value
        self.rule = rule
        self.valid = [str(v) for v in valid] if valid is not None else None
        shown = repr(value) if not isinstance(value, str) or len(value) <= SHOWN_CHARS else repr(
            value[: SHOWN_CHARS - 3] + "..."
        )
        message = f"InvalidInput: {argument}={shown}: {rule}"
        if self.valid:
            message += f" (valid: {', '.join(self.valid)})"
        super().__init__(message)


class DashScopeError(WanxError):
    """DashScope (or the way to it) reported a failure."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.task_id = task_id
        text = f"{code}: {message}"
        details = [f"HTTP {status}" if status else "", f"request_id={request_id}" if request_id else ""]
        if task_id:
            details.append(f"task_id={task_id}")
        if any(details):
            text += f" ({', '.join(d for d in details if d)})"
        if self.hint:
            text += f" Hint: {self.hint}"
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        return self.status == 429 or (self.status is not None and self.status >= 500) or self.code in {
            "ConnectionError",
            "RequestTimeOut",
        }


class BudgetExceeded(WanxError):
    """The submission would take the estimated spend of the last 24 hours past ``WANX_BUDGET_CNY``; nothing was
    sent. ``frees_at``: when enough earlier submissions leave the window for it to fit (None: it never fits)."""

    code = "BudgetExceeded"

    def __init__(self, cost: float, spent: float, limit: float, frees_at: str | None) -> None:
        self.cost, self.spent, self.limit, self.frees_at = cost, spent, limit, frees_at
        when = (f"room for it frees up at {frees_at}" if frees_at else
                "it does not fit even in an empty window: choose a cheaper resolution, duration or model")
        super().__init__(
            f"BudgetExceeded: this task (about {cost:g} CNY) would take the estimated spend of the last 24 hours "
            f"past WANX_BUDGET_CNY={limit:g} (spent so far: {spent:g} CNY); nothing was sent; {when}."
        )


class MissingApiKey(WanxError):
    """No DASHSCOPE_API_KEY: nothing can be sent."""

    code = "MissingApiKey"

    def __init__(self) -> None:
        super().__init__(
            "MissingApiKey: DASHSCOPE_API_KEY is not set. Create a key in the Alibaba Cloud Model Studio console "
            "(keys are per region: set WANX_REGION too), or set WANX_SIMULATE=1 to try the free simulator."
        )
