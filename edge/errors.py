"""The API's one error shape, and the exception that carries it to the response."""

import msgspec
import orjson
from aiohttp import web

TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "card_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
}


SHARD_RETRY_AFTER_S = 1  # a busy shard drains, and a stopped one is started again, within seconds


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 error_type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type or TYPES_BY_STATUS.get(status, "invalid_request_error")
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"type": self.error_type, "code": self.code, "message": self.message, "param": self.param}}
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json",
                            headers=self.headers)


def from_validation(error: msgspec.ValidationError) -> ApiError:
    """msgspec says where a body breaks its schema (`... - at `$.a[0].b``): that path becomes `param`."""
    message = str(error)
    path = ""
    if " - at `$" in message:
        path = message.rsplit(" - at `$", 1)[1].rstrip("`").lstrip(".")
    field = ""
    if message.startswith(("Object contains unknown field", "Object missing required field")):
        field = message.split("`")[1]
    param = ".".join(part for part in (path, field) if part) or None
    return ApiError(400, "parameter_invalid", message, param)


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    """`param`: the field that named the object, when the body or the query did rather than the path."""
    return ApiError(404, "resource_missing", f"No such {kind}: {object_id!r}", param)


def shard_unavailable() -> ApiError:
    """A shard that is busy, changing primaries or being started again: answered at once, to be retried."""
    return ApiError(503, "shard_unavailable", "the ledger is unavailable for a moment; retry shortly",
                    headers={"Retry-After": str(SHARD_RETRY_AFTER_S)})
