"""DashScope's error answers: the exception carrying one, and its usual codes and messages."""

from __future__ import annotations

CODE_FOR_STATUS = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    408: "RequestTimeOut",
    429: "Throttling.RateQuota",
    500: "InternalError",
}
MESSAGES = {
    "InvalidApiKey": "Invalid API-key provided.",
    "AccessDenied": "Access denied.",
    "RequestTimeOut": "Request timed out, please try again later.",
    "Throttling.RateQuota": "Requests rate limit exceeded, please try again later.",
    "InternalError": "An internal error has occured, please try again later or contact service support.",
    "DataInspectionFailed": "Output data may contain inappropriate content.",
    "InvalidParameter.DataInspection": "Input data may contain inappropriate content.",
    "IPInfringementSuspect": "Input data is suspected of being involved in IP infringement.",
    "InternalError.Algo": "Algorithm process error, please try again later.",
}


def message_for(code: str) -> str:
    """DashScope's usual message for ``code`` (a generic one for codes it has none for)."""
    return MESSAGES.get(code, f"Simulated {code} error.")


class ApiError(Exception):
    """An error answer: HTTP status, DashScope code and message."""

    def __init__(self, status: int, code: str, message: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message or message_for(code)
        super().__init__(f"{status} {code}: {self.message}")


def invalid(message: str) -> ApiError:
    """A 400 InvalidParameter answer."""
    return ApiError(400, "InvalidParameter", message)
