"""The asyncio client (grpc.aio): the same calls as :class:`rmr1_client.Client`, awaited.

Create it inside the event loop that uses it (a grpc.aio channel belongs to one loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import _requests
from ._core import CHANNEL_OPTIONS, DEFAULT_RETRY, Batch, RetryPolicy, batch_deadline, channel_credentials, metadata
from ._proto.rmr1.v1 import judge_pb2_grpc, models_pb2, models_pb2_grpc
from ._requests import ConversationLike, MessageLike
from .errors import RMR1Error
from .types import Judgment, ModelInfo, Ranking

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """Async twin of :class:`rmr1_client.Client`; arguments and results are the same."""

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
        self._channel = (
            grpc.aio.secure_channel(target, creds, opts) if creds else grpc.aio.insecure_channel(target, opts)
        )
        self._judge = judge_pb2_grpc.JudgeServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            _requests.HEALTH_CHECK,
            request_serializer=_requests.encode_health_request,
            response_deserializer=_requests.decode_health_response,
        )

    async def _unary(
        self, method: Callable[..., Awaitable[T]], request: Any, timeout: float | None, retry: RetryPolicy | None
    ) -> T:
        policy = retry or self.retry
        delays = policy.delays()
        attempt = 0
        per_try = timeout or self.timeout
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return await method(request, timeout=per_try, metadata=self._metadata)
            except grpc.RpcError as e:
                passed = time.monotonic() - started >= per_try
                error = RMR1Error.from_rpc_error(e, attempts=attempt, deadline_passed=passed)
                if not error.retryable or attempt >= policy.max_attempts:
                    raise error from None
            await asyncio.sleep(next(delays))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def judge(
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
        """See :meth:`rmr1_client.Client.judge`."""
        request = _requests.judge_request(
            question, response_a, response_b, conversation=conversation, conversation_a=conversation_a,
            conversation_b=conversation_b, both_orders=both_orders, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, include_reasoning=include_reasoning, model=model,
            request_id=request_id,
        )
        return Judgment.from_proto(await self._unary(self._judge.Judge, request, timeout, retry))

    async def judge_many(
        self,
        pairs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int = 64,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        **options: Any,
    ) -> list[Judgment | RMR1Error]:
        """See :meth:`rmr1_client.Client.judge_many`."""
        batch = Batch(pairs, options, concurrency, retry or self.retry)
        while (sent := batch.next_round()) is not None:
            deadline = timeout or batch_deadline(self.timeout, len(sent), concurrency)
            got, stream_error = await self._batch_round(batch, sent, deadline)
            batch.finish_round(sent, got, stream_error)
            if batch.pending:
                await asyncio.sleep(batch.backoff())
        return batch.outcome()

    async def _batch_round(
        self, batch: Batch, sent: list[int], deadline: float
    ) -> tuple[dict[int, Judgment | RMR1Error], RMR1Error | None]:
        slots = asyncio.Semaphore(batch.concurrency)

        async def requests():
            for i in sent:
                await slots.acquire()
                yield batch.requests[i]

        got: dict[int, Judgment | RMR1Error] = {}
        stream_error = None
        started = time.monotonic()
        call = self._judge.JudgeBatch(requests(), timeout=deadline, metadata=self._metadata)
        try:
            async for res in call:
                index, result = Batch.item_result(res)
                if index is not None:
                    got[index] = result
                slots.release()
        except grpc.RpcError as e:
            stream_error = RMR1Error.from_rpc_error(e, deadline_passed=time.monotonic() - started >= deadline)
        finally:
            call.cancel()
        return got, stream_error

    async def rank(
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
        """See :meth:`rmr1_client.Client.rank`."""
        request = _requests.rank_request(
            conversation, candidates, strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, model=model, request_id=request_id,
        )
        return Ranking.from_proto(await self._unary(self._judge.Rank, request, timeout, retry))

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        res = await self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout, None)
        return [ModelInfo.from_proto(m) for m in res.models]

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        try:
            return await self._health(service, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RMR1Error.from_rpc_error(e) from None

    async def wait_until_serving(self, timeout: float = 120.0, poll: float = 0.25) -> None:
        end = time.monotonic() + timeout
        last = "unreachable"
        while time.monotonic() < end:
            try:
                last = await self.health(timeout=min(5.0, max(0.1, end - time.monotonic())))
                if last == "SERVING":
                    return
            except RMR1Error as e:
                last = f"unreachable ({e.code.name}: {e.message})"
            await asyncio.sleep(poll)
        raise RMR1Error(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.addr} not SERVING after {timeout} s: {last}")
