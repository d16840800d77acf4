"""Building wire requests from Python arguments (shared by the sync and async clients)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from ._proto.rmr1.v1 import judge_pb2

#: A message as Python code usually holds it: ``{"role": "user", "content": "..."}``.
MessageLike = Union[Mapping[str, Any], judge_pb2.Message]
#: A question string (one user turn) or a list of messages.
ConversationLike = Union[str, Sequence[MessageLike]]

_ROLES = {
    "user": judge_pb2.ROLE_USER,
    "human": judge_pb2.ROLE_USER,
    "assistant": judge_pb2.ROLE_ASSISTANT,
    "system": judge_pb2.ROLE_SYSTEM,
}

#: The keyword arguments of ``judge`` that ``judge_many`` accepts per pair and as shared options.
JUDGE_ARGS = frozenset(
    {
        "question", "response_a", "response_b", "conversation", "conversation_a", "conversation_b",
        "both_orders", "max_new_tokens", "temperature", "top_p", "seed", "include_reasoning", "model",
    }
)


def content_text(content: Any) -> str:
    """Message content as text: a string, or a list of parts (``{"type": "text", "text": ...}``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def message(m: MessageLike) -> judge_pb2.Message:
    if isinstance(m, judge_pb2.Message):
        return m
    role = str(m.get("role", "")).lower()
    if role not in _ROLES:
        raise ValueError(f"message role {m.get('role')!r} is not one of user, assistant, system")
    return judge_pb2.Message(role=_ROLES[role], content=content_text(m.get("content")))


def conversation(value: ConversationLike) -> list[judge_pb2.Message]:
    """A question string becomes one user message; a list of messages is converted as is (the
    server checks roles and order and names the offending field)."""
    if isinstance(value, str):
        return [judge_pb2.Message(role=judge_pb2.ROLE_USER, content=value)]
    return [message(m) for m in value]


def options(
    *,
    both_orders: bool = False,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    include_reasoning: bool = True,
) -> judge_pb2.JudgeOptions:
    o = judge_pb2.JudgeOptions(both_orders=both_orders, include_reasoning=include_reasoning)
    if max_new_tokens is not None:
        o.max_new_tokens = max_new_tokens
    if temperature is not None:
        o.temperature = temperature
    if top_p is not None:
        o.top_p = top_p
    if seed is not None:
        o.seed = seed
    return o


def judge_request(
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
) -> judge_pb2.JudgeRequest:
    """A ``JudgeRequest``: either (``question`` or ``conversation``) with ``response_a`` and
    ``response_b`` (empty strings are valid replies), or two whole conversations."""
    req = judge_pb2.JudgeRequest(
        request_id=request_id,
        model=model or "",
        options=options(
            both_orders=both_orders, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, include_reasoning=include_reasoning,
        ),
    )
    if conversation_a is not None or conversation_b is not None:
        if conversation_a is None or conversation_b is None:
            raise ValueError("conversation_a and conversation_b go together")
        if question is not None or conversation is not None or response_a is not None or response_b is not None:
            raise ValueError("pass either conversation_a/conversation_b or a question/conversation with responses")
        req.conversations.conversation_a.extend(_conv(conversation_a))
        req.conversations.conversation_b.extend(_conv(conversation_b))
        return req
    if response_a is None or response_b is None:
        raise ValueError("response_a and response_b are required (an empty string is a valid reply)")
    if question is not None and conversation is None:
        req.responses.conversation.extend(_conv(question))
    elif conversation is not None and question is None:
        req.responses.conversation.extend(_conv(conversation))
    else:
        raise ValueError("pass exactly one of question= and conversation=")
    req.responses.response_a = response_a
    req.responses.response_b = response_b
    return req


_conv = conversation


def split_pair(pair: Mapping[str, Any]) -> dict[str, Any]:
    """Checks one ``judge_many`` item (a dict of ``judge``'s arguments)."""
    unknown = set(pair) - JUDGE_ARGS
    if unknown:
        raise ValueError(f"unknown judge argument(s) {sorted(unknown)}; accepted: {sorted(JUDGE_ARGS)}")
    return dict(pair)


def rank_request(
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
) -> judge_pb2.RankRequest:
    strategies = {
        None: judge_pb2.RANK_STRATEGY_UNSPECIFIED,
        "auto": judge_pb2.RANK_STRATEGY_UNSPECIFIED,
        "all_pairs": judge_pb2.RANK_STRATEGY_ALL_PAIRS,
        "knockout": judge_pb2.RANK_STRATEGY_KNOCKOUT,
    }
    if strategy not in strategies:
        raise ValueError(f"strategy {strategy!r} is not one of auto, all_pairs, knockout")
    return judge_pb2.RankRequest(
        request_id=request_id,
        model=model or "",
        conversation=_conv(conversation),
        candidates=list(candidates),
        options=options(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, include_reasoning=False
        ),
        strategy=strategies[strategy],
    )


# grpc.health.v1 without generated code: HealthCheckRequest{service} and HealthCheckResponse{status}
# are one field each, so they are encoded by hand rather than vendoring a second copy of a proto that
# grpcio-health-checking also registers (two registrations of one file clash in the descriptor pool).
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_health_request(service: str) -> bytes:
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_health_response(data: bytes) -> str:
    """The ``status`` field (1, varint) of a HealthCheckResponse, as its enum name."""
    i, status = 0, 0
    while i < len(data):
        key = data[i]
        i += 1
        if key != 0x08:
            raise ValueError(f"unexpected field key {key:#x} in HealthCheckResponse")
        status, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            status |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
    return HEALTH_STATUSES.get(status, "UNKNOWN")
