"""Exceptions raised by the sbx SDK.

The server answers every failure with one body, ``{"error_code",
"message", "request_id"}``, and its ``error_code`` is the stable part:
clients branch on it, never on the message. So every code gets its own
subclass of :class:`ApiError` (``except sbx.NotFound:``), and a code this
SDK does not know yet (a newer server) still arrives as an ``ApiError``
with the code in ``error_code``, not as a crash.

Failures that never produced an answer (connection refused, a timeout)
are :class:`TransportError`; an answer that breaks the API's promises
(bad JSON, a stream cut before its end) is :class:`ProtocolError`; a
downloaded archive that tries to write outside its destination is
:class:`UnsafeArchiveError`. Everything derives from :class:`SbxError`.
"""

from __future__ import annotations

import json
from typing import Dict, Mapping, Optional, Type

__all__ = [
    "SbxError",
    "ApiError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "PermissionDenied",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "PayloadTooLarge",
    "InsufficientStorage",
    "InternalError",
    "Unavailable",
    "TransportError",
    "RequestTimeout",
    "ProtocolError",
    "UnsafeArchiveError",
    "error_for",
]


class SbxError(Exception):
    """Base class of every exception the SDK raises."""


class ApiError(SbxError):
    """The server refused the call and said why.

    ``error_code`` is the server's stable code (``None`` only when the
    answer was not the API's error body, e.g. from a proxy in between),
    ``status`` the HTTP status, ``message`` the server's words and
    ``request_id`` the id its log lines and audit record carry.
    """

    #: The code this class stands for; ``None`` on the base class.
    code: Optional[str] = None

    def __init__(
        self,
        message: str,
        *,
        error_code: Optional[str] = None,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code if error_code is not None else self.code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.error_code or 'error'}: {self.message}"
        if self.status is not None:
            text += f" (http {self.status}"
            text += f", request {self.request_id})" if self.request_id else ")"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, error_code={self.error_code!r}, "
            f"status={self.status!r}, request_id={self.request_id!r})"
        )


class InvalidRequest(ApiError):
    """The request is malformed or a value is out of range (400)."""

    code = "invalid_request"


class Unauthorized(ApiError):
    """No token, or one that is unknown, expired or revoked (401)."""

    code = "unauthorized"


class Forbidden(ApiError):
    """The token is valid but its scopes do not allow the call (403)."""

    code = "forbidden"


class PermissionDenied(ApiError):
    """The sandbox's own file permissions refuse the operation (403)."""

    code = "permission_denied"


class NotFound(ApiError):
    """The sandbox, process, path or route does not exist (404)."""

    code = "not_found"


class MethodNotAllowed(ApiError):
    """The route exists, but not with this method (405)."""

    code = "method_not_allowed"


class Conflict(ApiError):
    """The resource's state does not allow the call (409)."""

    code = "conflict"


class PayloadTooLarge(ApiError):
    """The body is larger than the server accepts (413)."""

    code = "payload_too_large"


class InsufficientStorage(ApiError):
    """The storage pool cannot hold what the call would promise (507).

    Creates, starts, forks and snapshots are refused once the disk space
    promised to sandboxes and snapshots would exceed the pool.
    """

    code = "insufficient_storage"


class InternalError(ApiError):
    """A failure inside the server; details are in its log (500)."""

    code = "internal"


class Unavailable(ApiError):
    """The sandbox's agent or the runtime cannot be reached (503)."""

    code = "unavailable"


_BY_CODE: Dict[str, Type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PermissionDenied,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        InsufficientStorage,
        InternalError,
        Unavailable,
    )
    if cls.code is not None
}


class TransportError(SbxError):
    """The call got no answer: the connection failed or broke."""


class RequestTimeout(TransportError, TimeoutError):
    """An HTTP timeout of the client fired before the server answered.

    Not the same as a command's own timeout, which the server enforces and
    reports as ``ExecResult.timed_out``.
    """


class ProtocolError(SbxError):
    """The server's answer is not what the API promises."""


class UnsafeArchiveError(SbxError):
    """A tar from a sandbox tried to place something outside its destination.

    Raised before anything of the offending archive is written locally.
    """


def error_for(
    error_code: Optional[str],
    message: str,
    *,
    status: Optional[int] = None,
    request_id: Optional[str] = None,
) -> ApiError:
    """The exception for ``error_code``: its subclass, or :class:`ApiError`."""
    cls = _BY_CODE.get(error_code or "", ApiError)
    return cls(message, error_code=error_code, status=status, request_id=request_id)


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """Decodes a non-2xx answer; a body that is not the API's is kept as text."""
    header_id = headers.get("x-request-id")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error_code"), str):
        request_id = parsed.get("request_id")
        return error_for(
            parsed["error_code"],
            str(parsed.get("message", "")),
            status=status,
            request_id=request_id if isinstance(request_id, str) else header_id,
        )
    text = body.decode("utf-8", errors="replace").strip()[:1000] or f"http status {status}"
    return ApiError(text, status=status, request_id=header_id)
