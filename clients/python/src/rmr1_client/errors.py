"""Errors that keep the server's gRPC status code and message."""

from __future__ import annotations

import grpc

__all__ = ["RMR1Error", "RETRYABLE_CODES", "status_code_from_int"]

#: Codes a call is retried on (with backoff): the server is not up / not loaded yet, or its queue
#: is full. Everything else (INVALID_ARGUMENT above all) is the caller's to fix and is never retried.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_int(value: int) -> grpc.StatusCode:
    """A ``google.rpc.Code`` number (as in ``BatchError.code``) as a :class:`grpc.StatusCode`."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


class RMR1Error(Exception):
    """A failed call or batch item: ``code`` (a :class:`grpc.StatusCode`) and the server's message.

    ``attempts`` says how many tries the call made (more than 1 after retries on UNAVAILABLE /
    RESOURCE_EXHAUSTED). ``request_id`` is set for :meth:`Client.judge_many` items. ``rejection``
    names why the server refused a batch item for a reason about the stream rather than the
    request ("DUPLICATE_REQUEST_ID", "MISSING_REQUEST_ID", "SHUTTING_DOWN": the ``BatchRejection``
    value without its prefix); None for every other error.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        attempts: int = 1,
        request_id: str | None = None,
        rejection: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.attempts = attempts
        self.request_id = request_id
        self.rejection = rejection

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @classmethod
    def from_rpc_error(
        cls, error: grpc.RpcError, *, attempts: int = 1, deadline_passed: bool = False
    ) -> RMR1Error:
        """``deadline_passed``: the call's own deadline is over. The server (tonic) ends a call
        whose deadline it saw expire with CANCELLED "Timeout expired"; that is reported as
        DEADLINE_EXCEEDED (with the server's message), as every other expired deadline is."""
        code = (error.code() if hasattr(error, "code") else None) or grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else str(error)) or ""
        if deadline_passed and code == grpc.StatusCode.CANCELLED:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        return cls(code, details, attempts=attempts)

    def __reduce__(self):  # picklable across processes (Ray, multiprocessing)
        return (_rebuild, (self.code.value[0], self.message, self.attempts, self.request_id, self.rejection))


def _rebuild(
    code: int, message: str, attempts: int, request_id: str | None, rejection: str | None = None
) -> RMR1Error:
    return RMR1Error(
        status_code_from_int(code), message, attempts=attempts, request_id=request_id, rejection=rejection
    )
