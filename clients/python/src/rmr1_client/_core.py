"""What the sync and async clients share: addresses, retry policy, batch bookkeeping."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from . import _requests
from ._proto.rmr1.v1 import judge_pb2
from .errors import RMR1Error, status_code_from_int
from .types import Judgment

#: Judge outputs with reasoning can be long; gRPC's default 4 MiB receive limit is too tight for a
#: big Rank response with many comparisons.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff and jitter.

    ``max_attempts`` counts the first try (1 = never retry). Delays: ``initial_backoff`` times
    ``multiplier`` per retry, capped at ``max_backoff``, each scaled by a random factor in
    [1 - jitter, 1 + jitter]. With the defaults a call gives a server about 15 s to come up.
    """

    max_attempts: int = 6
    initial_backoff: float = 0.25
    max_backoff: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff
        while True:
            yield min(delay, self.max_backoff) * random.uniform(1 - self.jitter, 1 + self.jitter)
            delay *= self.multiplier


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def parse_target(addr: str) -> tuple[str, bool | None]:
    """``host:port``, ``http://host:port`` or ``https://host:port`` -> (target, tls from scheme)."""
    for scheme, tls in (("https://", True), ("http://", False), ("grpc://", False), ("grpcs://", True)):
        if addr.startswith(scheme):
            return addr[len(scheme):].rstrip("/"), tls
    return addr, None


def channel_credentials(
    addr: str, tls: bool | None, credentials: grpc.ChannelCredentials | None
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The channel target and its credentials (None: plaintext)."""
    target, scheme_tls = parse_target(addr)
    if credentials is not None:
        return target, credentials
    use_tls = tls if tls is not None else bool(scheme_tls)
    return target, grpc.ssl_channel_credentials() if use_tls else None


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def batch_deadline(timeout: float, n: int, concurrency: int) -> float:
    """The deadline of a JudgeBatch stream: ``timeout`` per wave of ``concurrency`` judgments."""
    return timeout * max(1, math.ceil(n / max(1, concurrency)))


_REJECTION_PREFIX = "BATCH_REJECTION_"


def rejection_name(value: int) -> str | None:
    """A ``BatchRejection`` value as its name without the prefix ("DUPLICATE_REQUEST_ID"); None for
    UNSPECIFIED. A value newer than these stubs becomes "UNKNOWN_<n>"."""
    if value == judge_pb2.BATCH_REJECTION_UNSPECIFIED:
        return None
    try:
        name = judge_pb2.BatchRejection.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name[len(_REJECTION_PREFIX):] if name.startswith(_REJECTION_PREFIX) else name


class Batch:
    """The bookkeeping of one ``judge_many`` call across retry rounds.

    Each round sends the pending items on a new stream; an item whose result is a retryable error
    (or that a retryable stream failure left without a result) is sent again next round.
    """

    def __init__(
        self, pairs: Sequence[Mapping[str, Any]], options: Mapping[str, Any], concurrency: int, policy: RetryPolicy
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        shared = _requests.split_pair(options)
        self.requests = [
            _requests.judge_request(**{**shared, **_requests.split_pair(p)}, request_id=str(i))
            for i, p in enumerate(pairs)
        ]
        self.results: list[Judgment | RMR1Error | None] = [None] * len(self.requests)
        self.pending = list(range(len(self.requests)))
        self.concurrency = concurrency
        self.policy = policy
        self.attempt = 0
        self._delays = policy.delays()

    def next_round(self) -> list[int] | None:
        """The items to send this round, or None when every item has its result."""
        if not self.pending:
            return None
        self.attempt += 1
        return list(self.pending)

    def backoff(self) -> float:
        return next(self._delays)

    @staticmethod
    def item_result(res: judge_pb2.JudgeBatchResult) -> tuple[int | None, Judgment | RMR1Error]:
        try:
            index: int | None = int(res.request_id)
        except ValueError:
            index = None
        if res.HasField("response"):
            return index, Judgment.from_proto(res.response)
        return index, RMR1Error(
            status_code_from_int(res.error.code), res.error.message, request_id=res.request_id,
            rejection=rejection_name(res.error.rejection),
        )

    def finish_round(
        self, sent: list[int], got: dict[int, Judgment | RMR1Error], stream_error: RMR1Error | None
    ) -> None:
        retry = []
        for i in sent:
            result = got.get(i)
            if result is None:
                result = stream_error or RMR1Error(
                    grpc.StatusCode.INTERNAL, "the JudgeBatch stream ended without a result for this item"
                )
                result = RMR1Error(result.code, result.message, request_id=str(i), rejection=result.rejection)
            if isinstance(result, RMR1Error):
                result.attempts = self.attempt
                if result.retryable and self.attempt < self.policy.max_attempts:
                    retry.append(i)
                    continue
            self.results[i] = result
        self.pending = retry

    def outcome(self) -> list[Judgment | RMR1Error]:
        assert all(r is not None for r in self.results)
        return list(self.results)  # type: ignore[arg-type]
