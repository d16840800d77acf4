"""The synchronous client. Thread-safe: one :class:`Client` can serve a whole thread pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from . import _requests
from ._core import CHANNEL_OPTIONS, DEFAULT_RETRY, Batch, RetryPolicy, batch_deadline, channel_credentials, metadata
from ._proto.rmr1.v1 import judge_pb2_grpc, models_pb2, models_pb2_grpc
from ._requests import ConversationLike, MessageLike
from .errors import RMR1Error
from .types import Judgment, ModelInfo, Ranking

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A client of an ``rmr1 serve`` server.

    Args:
        addr: ``host:port``, ``http://host:port`` or ``https://host:port`` (https implies TLS).
        timeout: Deadline in seconds of every unary call (each try); ``judge_many`` gives its
            stream this much per wave of ``concurrency`` judgments unless told otherwise.
        tls: Use TLS with the system roots (default: from the scheme, else plaintext).
        credentials: Explicit ``grpc.ChannelCredentials`` (overrides ``tls``).
        token: Sent as ``authorization: Bearer <token>`` on every call (for a proxy in front).
        retry: Backoff policy for UNAVAILABLE / RESOURCE_EXHAUSTED; never applied to other codes.
        channel_options: Extra gRPC channel options.
    """

    def __init__(
        self,
        addr: str,
        *,
        timeout: float = 300.0,
        tls: bool | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        target, creds = channel_credentials(addr, tls, credentials)
        opts = list(CHANNEL_OPTIONS) + list(channel_options)
        self.addr = addr
        self.timeout = timeout
        self.retry = retry
        self._metadata = metadata(token)
        self._channel = grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)
        self._judge = judge_pb2_grpc.JudgeServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            _requests.HEALTH_CHECK,
            request_serializer=_requests.encode_health_request,
            response_deserializer=_requests.decode_health_response,
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None, retry: RetryPolicy | None) -> T:
        policy = retry or self.retry
        delays = policy.delays()
        attempt = 0
        per_try = timeout or self.timeout
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return method(request, timeout=per_try, metadata=self._metadata)
            except grpc.RpcError as e:
                passed = time.monotonic() - started >= per_try
                error = RMR1Error.from_rpc_error(e, attempts=attempt, deadline_passed=passed)
                if not error.retryable or attempt >= policy.max_attempts:
                    raise error from None
            time.sleep(next(delays))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- judgments ------------------------------------------------------------------------------

    def judge(
        self,
        question: str | None = None,
        response_a: str | None = None,
        response_b: str | None = None,
        *,
        conversation: ConversationLike | None = None,
        conversation_a: Sequence[MessageLike] | None = None,
        conversation_b: Sequence[MessageLike] | None = None,
        both_orders: bool = False,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        include_reasoning: bool = True,
        model: str | None = None,
        request_id: str = "",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Judgment:
        """Judges ``response_a`` against ``response_b`` as replies to ``question`` (one user turn)
        or to ``conversation`` (messages ending with a user turn); or two whole conversations
        (``conversation_a``/``conversation_b``). Raises :class:`RMR1Error` on failure."""
        request = _requests.judge_request(
            question, response_a, response_b, conversation=conversation, conversation_a=conversation_a,
            conversation_b=conversation_b, both_orders=both_orders, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, include_reasoning=include_reasoning, model=model,
            request_id=request_id,
        )
        return Judgment.from_proto(self._unary(self._judge.Judge, request, timeout, retry))

    def judge_many(
        self,
        pairs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int = 64,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        **options: Any,
    ) -> list[Judgment | RMR1Error]:
        """Judges many pairs over one ``JudgeBatch`` stream.

        Each pair is a dict of :meth:`judge`'s arguments; ``options`` (same names) apply to every
        pair unless the pair sets them. At most ``concurrency`` judgments are in flight. Returns
        one entry per pair, in input order: a :class:`Judgment`, or the :class:`RMR1Error` of that
        item (a bad item does not fail the others). Items refused with UNAVAILABLE or
        RESOURCE_EXHAUSTED, or cut off by such a stream failure, are retried with backoff.
        ``timeout`` is the deadline of each stream (default: the client's timeout per wave of
        ``concurrency`` items).
        """
        batch = Batch(pairs, options, concurrency, retry or self.retry)
        while (sent := batch.next_round()) is not None:
            deadline = timeout or batch_deadline(self.timeout, len(sent), concurrency)
            got, stream_error = self._batch_round(batch, sent, deadline)
            batch.finish_round(sent, got, stream_error)
            if batch.pending:
                time.sleep(batch.backoff())
        return batch.outcome()

    def _batch_round(
        self, batch: Batch, sent: list[int], deadline: float
    ) -> tuple[dict[int, Judgment | RMR1Error], RMR1Error | None]:
        slots = threading.Semaphore(batch.concurrency)
        finished = threading.Event()

        def requests():
            for i in sent:
                while not slots.acquire(timeout=0.05):
                    if finished.is_set():
                        return
                if finished.is_set():
                    return
                yield batch.requests[i]

        got: dict[int, Judgment | RMR1Error] = {}
        stream_error = None
        started = time.monotonic()
        call = self._judge.JudgeBatch(requests(), timeout=deadline, metadata=self._metadata)
        try:
            for res in call:
                index, result = Batch.item_result(res)
                if index is not None:
                    got[index] = result
                slots.release()
        except grpc.RpcError as e:
            stream_error = RMR1Error.from_rpc_error(e, deadline_passed=time.monotonic() - started >= deadline)
        finally:
            finished.set()
            call.cancel()
        return got, stream_error

    def rank(
        self,
        conversation: ConversationLike,
        candidates: Sequence[str],
        *,
        strategy: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        model: str | None = None,
        request_id: str = "",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Ranking:
        """Ranks ``candidates`` (at least 2) as replies to ``conversation`` (a question string or
        messages ending with a user turn) by pairwise judgments in both orders. ``strategy``:
        "all_pairs", "knockout" or None (all pairs up to 8 candidates, else knockout)."""
        request = _requests.rank_request(
            conversation, candidates, strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, model=model, request_id=request_id,
        )
        return Ranking.from_proto(self._unary(self._judge.Rank, request, timeout, retry))

    # -- the server -----------------------------------------------------------------------------

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models; the default one has ``is_default``."""
        res = self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout, None)
        return [ModelInfo.from_proto(m) for m in res.models]

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """gRPC health: "SERVING" once the model is loaded, "NOT_SERVING" while it loads.
        Not retried: an unreachable server raises :class:`RMR1Error` (UNAVAILABLE)."""
        try:
            return self._health(service, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RMR1Error.from_rpc_error(e) from None

    def wait_until_serving(self, timeout: float = 120.0, poll: float = 0.25) -> None:
        """Blocks until health is SERVING; raises :class:`RMR1Error` (DEADLINE_EXCEEDED) after
        ``timeout`` seconds, saying whether the server was unreachable or still loading."""
        end = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < end:
            try:
                last = self.health(timeout=min(5.0, max(0.1, end - time.monotonic())))
                if last == "SERVING":
                    return
            except RMR1Error as e:
                last = f"unreachable ({e.code.name}: {e.message})"
            time.sleep(poll)
        raise RMR1Error(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.addr} not SERVING after {timeout} s: {last}")

