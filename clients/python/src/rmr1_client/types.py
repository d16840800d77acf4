"""Typed results: a judgment, a ranking, a served model. Built from the wire messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._proto.rmr1.v1 import judge_pb2, models_pb2

__all__ = [
    "Verdict",
    "TaskType",
    "RubricItem",
    "Usage",
    "Timings",
    "OrderJudgment",
    "Judgment",
    "CandidateScore",
    "Comparison",
    "Ranking",
    "ModelInfo",
]


class Verdict(str, enum.Enum):
    """Which candidate the judge prefers. INVALID: its output had no usable verdict."""

    UNSPECIFIED = "UNSPECIFIED"
    A = "A"
    B = "B"
    INVALID = "INVALID"

    @classmethod
    def from_proto(cls, value: int) -> Verdict:
        by_value: dict[int, Verdict] = {
            judge_pb2.VERDICT_A: cls.A,
            judge_pb2.VERDICT_B: cls.B,
            judge_pb2.VERDICT_INVALID: cls.INVALID,
        }
        return by_value.get(value, cls.UNSPECIFIED)


class TaskType(str, enum.Enum):
    """The RM-R1 judge's own classification of the question."""

    UNSPECIFIED = "UNSPECIFIED"
    CHAT = "CHAT"
    REASONING = "REASONING"

    @classmethod
    def from_proto(cls, value: int) -> TaskType:
        by_value: dict[int, TaskType] = {
            judge_pb2.TASK_TYPE_CHAT: cls.CHAT,
            judge_pb2.TASK_TYPE_REASONING: cls.REASONING,
        }
        return by_value.get(value, cls.UNSPECIFIED)


@dataclass(frozen=True)
class RubricItem:
    text: str
    #: Percent as the judge wrote it ("Accuracy (40%)" -> 40.0); None when it gave none.
    weight_percent: float | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens served from the prefix cache.
    cached_tokens: int = 0

    @classmethod
    def from_proto(cls, u: judge_pb2.Usage) -> Usage:
        return cls(u.prompt_tokens, u.completion_tokens, u.cached_tokens)


@dataclass(frozen=True)
class Timings:
    queue_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    total_seconds: float = 0.0
    preemptions: int = 0

    @classmethod
    def from_proto(cls, t: judge_pb2.Timings) -> Timings:
        return cls(t.queue_seconds, t.time_to_first_token_seconds, t.total_seconds, t.preemptions)


def _opt(message, name: str) -> float | None:
    return getattr(message, name) if message.HasField(name) else None


def _rubric(items) -> list[RubricItem]:
    return [RubricItem(r.text, _opt(r, "weight_percent")) for r in items]


@dataclass(frozen=True)
class OrderJudgment:
    """One generation: the pair shown in one order (``swapped``: candidate A shown second)."""

    swapped: bool
    verdict: Verdict
    invalid_reason: str
    prob_a: float | None
    strict_verdict: Verdict
    task_type: TaskType
    rubric: list[RubricItem]
    justification: str
    solution: str
    evaluation: str
    raw_output: str
    finish_reason: str
    usage: Usage
    timings: Timings
    prob_forced: bool

    @classmethod
    def from_proto(cls, o: judge_pb2.OrderJudgment) -> OrderJudgment:
        return cls(
            swapped=o.swapped,
            verdict=Verdict.from_proto(o.verdict),
            invalid_reason=o.invalid_reason,
            prob_a=_opt(o, "prob_a"),
            strict_verdict=Verdict.from_proto(o.strict_verdict),
            task_type=TaskType.from_proto(o.task_type),
            rubric=_rubric(o.rubric),
            justification=o.justification,
            solution=o.solution,
            evaluation=o.evaluation,
            raw_output=o.raw_output,
            finish_reason=o.finish_reason,
            usage=Usage.from_proto(o.usage),
            timings=Timings.from_proto(o.timings),
            prob_forced=o.prob_forced,
        )


@dataclass(frozen=True)
class Judgment:
    """A pairwise judgment of candidates A and B.

    ``verdict`` follows upstream RM-R1's evaluation rule (combined over both orders when asked);
    ``prob_a``/``prob_b`` come from the verdict token, renormalised over A/B (None when the model
    never reached the verdict). The text fields (rubric, justification, ...) are from the as-given
    order and are empty unless ``include_reasoning`` was set; ``orders`` has each order in full.
    """

    request_id: str
    model: str
    verdict: Verdict
    invalid_reason: str
    prob_a: float | None
    prob_b: float | None
    task_type: TaskType
    rubric: list[RubricItem]
    justification: str
    solution: str
    evaluation: str
    raw_output: str
    usage: Usage
    timings: Timings
    orders: list[OrderJudgment] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict in (Verdict.A, Verdict.B)

    def preference_a(self, invalid: float = 0.5) -> float:
        """How much A is preferred, in [0, 1]: ``prob_a`` when the model reached a verdict token,
        else 1/0 from the text verdict, else ``invalid`` (no usable verdict at all)."""
        if self.prob_a is not None:
            return self.prob_a
        if self.verdict is Verdict.A:
            return 1.0
        if self.verdict is Verdict.B:
            return 0.0
        return invalid

    @classmethod
    def from_proto(cls, r: judge_pb2.JudgeResponse) -> Judgment:
        return cls(
            request_id=r.request_id,
            model=r.model,
            verdict=Verdict.from_proto(r.verdict),
            invalid_reason=r.invalid_reason,
            prob_a=_opt(r, "prob_a"),
            prob_b=_opt(r, "prob_b"),
            task_type=TaskType.from_proto(r.task_type),
            rubric=_rubric(r.rubric),
            justification=r.justification,
            solution=r.solution,
            evaluation=r.evaluation,
            raw_output=r.raw_output,
            usage=Usage.from_proto(r.usage),
            timings=Timings.from_proto(r.timings),
            orders=[OrderJudgment.from_proto(o) for o in r.orders],
        )


@dataclass(frozen=True)
class CandidateScore:
    index: int
    #: Higher is better; its meaning is given by :attr:`Ranking.method`.
    score: float
    #: Soft wins (probabilities) over this candidate's comparisons, in [0, 1].
    win_rate: float
    comparisons: int


@dataclass(frozen=True)
class Comparison:
    """One judgment inside a ranking: ``first`` shown as Chatbot A, ``second`` as Chatbot B."""

    first: int
    second: int
    verdict: Verdict
    prob_first: float | None
    invalid_reason: str


@dataclass(frozen=True)
class Ranking:
    """Candidates of one conversation, ranked by pairwise judgments.

    ``method`` is "bradley_terry" (scores are log-strengths with mean 0) or "knockout" (rounds
    won + mean win probability). ``scores`` is indexed by candidate; ``order`` is best first.
    """

    request_id: str
    model: str
    order: list[int]
    scores: list[CandidateScore]
    method: str
    comparisons: list[Comparison]
    usage: Usage
    timings: Timings

    @property
    def score_values(self) -> list[float]:
        return [s.score for s in self.scores]

    @property
    def win_rates(self) -> list[float]:
        return [s.win_rate for s in self.scores]

    @classmethod
    def from_proto(cls, r: judge_pb2.RankResponse) -> Ranking:
        scores = sorted(
            (CandidateScore(s.index, s.score, s.win_rate, s.comparisons) for s in r.scores), key=lambda s: s.index
        )
        return cls(
            request_id=r.request_id,
            model=r.model,
            order=list(r.order),
            scores=scores,
            method=r.method,
            comparisons=[
                Comparison(c.first, c.second, Verdict.from_proto(c.verdict), _opt(c, "prob_first"), c.invalid_reason)
                for c in r.comparisons
            ],
            usage=Usage.from_proto(r.usage),
            timings=Timings.from_proto(r.timings),
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    #: RM-R1 prompt family: "instruct" or "reasoning".
    family: str
    architecture: str
    context_length: int
    dtype: str
    quantization: str
    source: str
    is_default: bool
    manifest: str

    @classmethod
    def from_proto(cls, m: models_pb2.ModelInfo) -> ModelInfo:
        return cls(
            m.name, m.family, m.architecture, m.context_length, m.dtype, m.quantization, m.source,
            m.is_default, m.manifest,
        )
