"""Every error a client can get, as JSON: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline.contract import RETRY_AFTER_S
from pipeline.errors import ArticleStreamError, StoreUnavailable

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed here."),
}


class ApiError(ArticleStreamError):
    """A request that cannot be served; becomes a JSON error response."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def store_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("Redis is away: %s %s answered 503", request.method, request.url.path)
    return error_response(503, "store_unavailable",
                          "The job store cannot be reached; try again shortly.",
                          {"Retry-After": str(RETRY_AFTER_S)})


async def server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; the client learns nothing about the internals.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "The server failed to handle this request.")


EXCEPTION_HANDLERS = {ApiError: api_error, HTTPException: http_error,
                      StoreUnavailable: store_unavailable, Exception: server_error}
