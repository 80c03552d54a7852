"""The two kinds of failure a caller sees: input we refused, and errors DashScope reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Surface:
    """Who reads a message: an agent (MCP tool calls and arguments) or a person at a terminal (commands and
    flags); ``simulate``: the commands suggested to a person carry ``--simulate``."""

    cli: bool = False
    simulate: bool = False

    def flag(self, argument: str) -> str:
        """How to turn the boolean ``argument`` on: ``fit_image=true`` or ``--fit-image``."""
        return f"--{argument.replace('_', '-')}" if self.cli else f"{argument}=true"

    def command(self, words: str) -> str:
        """A ``wanx-mcp`` command line for a person (with ``--simulate`` when it was used)."""
        return f"`wanx-mcp {words}{' --simulate' if self.simulate else ''}`"

    def wait_for(self, task_id: str) -> str:
        """How to wait for a running task."""
        if self.cli:
            return f"Run {self.command(f'show {task_id} --wait 600')}"
        return f"Call get_task(task_id='{task_id}', wait_seconds=50)"

    @property
    def simulator(self) -> str:
        return "add --simulate" if self.cli else "set WANX_SIMULATE=1"

    @property
    def account_tasks(self) -> str:
        return (
            "the task list in the Model Studio console (or the MCP tool list_tasks with start_time and model_name)"
            if self.cli
            else "list_tasks"
        )


AGENT = Surface()

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
        "The submission may or may not have created a (paid) task: look for it with {account_tasks} "
        "before submitting again."
    ),
}


def hint(code: str, surface: Surface = AGENT) -> str | None:
    """The advice for ``code`` in the words of ``surface``."""
    text = HINTS.get(code)
    return None if text is None else text.format(account_tasks=surface.account_tasks)


#: How much of a rejected text value an error message repeats (whole paths, not whole prompts or data URIs).
SHOWN_CHARS = 300


class WanxError(Exception):
    """Base of every error this package raises on purpose; ``code`` leads its message."""

    code: str = "WanxError"

    @property
    def hint(self) -> str | None:
        return hint(self.code)

    def render(self, surface: Surface = AGENT) -> str:
        """The message in the words of ``surface`` (``str(error)`` is the agent's)."""
        return str(self)


class InvalidInput(WanxError):
    """An argument broke a documented rule; nothing was sent upstream."""

    code = "InvalidInput"

    def __init__(
        self,
        argument: str,
        value: object,
        rule: str,
        valid: Iterable[object] | None = None,
        *,
        fixed_by: str | None = None,
    ) -> None:
        """``fixed_by``: the boolean argument (e.g. ``fit_image``) that would fix the value."""
        self.argument = argument
        self.value = value
        self.rule = rule
        self.valid = [str(v) for v in valid] if valid is not None else None
        self.fixed_by = fixed_by
        super().__init__(self.render())

    def render(self, surface: Surface = AGENT) -> str:
        value = self.value
        shown = repr(value) if not isinstance(value, str) or len(value) <= SHOWN_CHARS else repr(
            value[: SHOWN_CHARS - 3] + "..."
        )
        message = f"InvalidInput: {self.argument}={shown}: {self.rule}"
        if self.fixed_by:
            message += f"; {surface.flag(self.fixed_by)} fixes this"
        if self.valid:
            message += f" (valid: {', '.join(self.valid)})"
        return message


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
        super().__init__(self.render())

    def render(self, surface: Surface = AGENT) -> str:
        text = f"{self.code}: {self.message}"
        details = [f"HTTP {self.status}" if self.status else "", f"request_id={self.request_id}" if self.request_id
                   else "", f"task_id={self.task_id}" if self.task_id else ""]  # fmt: skip
        if any(details):
            text += f" ({', '.join(d for d in details if d)})"
        advice = hint(self.code, surface)
        if advice:
            text += f" Hint: {advice}"
        return text

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
        super().__init__(self.render())

    def render(self, surface: Surface = AGENT) -> str:
        return (
            "MissingApiKey: DASHSCOPE_API_KEY is not set. Create a key in the Alibaba Cloud Model Studio console "
            f"(keys are per region: set WANX_REGION too), or {surface.simulator} to try the free simulator."
        )
