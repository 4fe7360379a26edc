"""The service's two error vocabularies: the control plane's (AWS exception name and HTTP
status, :class:`ApiError`) and the data plane's (the MQTT error codes, :class:`JobsError`)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A control-plane error: AWS exception name, HTTP status, message."""

    def __init__(self, name: str, status: int, message: str) -> None:
        super().__init__(message)
        self.name, self.status, self.message = name, status, message


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", 404, message)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", 400, message)


class JobsError(Exception):
    """A data-plane error reply: code, message and (for two codes) the execution state."""

    def __init__(self, code: str, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.state = code, message, state
