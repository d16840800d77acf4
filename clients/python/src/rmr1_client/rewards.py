"""Rewards from pairwise judgments: what the TRL, veRL and OpenRLHF adapters share.

Two ways to turn RM-R1's pairwise verdicts into per-completion rewards:

* **group** (:meth:`Rewarder.rank_groups`): completions of the same prompt are ranked against each
  other with one ``Rank`` call per prompt; a completion's reward is its soft win rate in [0, 1]
  (``score="win_rate"``) or its Bradley-Terry log-strength / knockout score (``score="score"``).
  GRPO normalises rewards within a group, so only the order and spacing inside a group matter.
* **reference** (:meth:`Rewarder.against_references`): each completion is judged against a
  reference answer (as candidate A, the reference as B, both orders by default) over one
  ``JudgeBatch`` stream; the reward is P(completion beats reference) in [0, 1].
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Union

from ._core import DEFAULT_RETRY, RetryPolicy
from ._requests import content_text
from .client import Client
from .errors import RMR1Error
from .types import Verdict

logger = logging.getLogger("rmr1_client.rewards")

#: What a failed judgment turns into: "raise" (default), or a fixed reward (None: TRL skips it).
OnError = Union[str, float, None]


def prompt_conversation(prompt: Any, *, system: str = "merge") -> list[dict[str, str]]:
    """A framework's prompt as RM-R1 messages ending with a user turn.

    ``prompt`` is a string (one user turn) or a list of ``{"role", "content"}`` messages. The
    RM-R1 prompt has no place for system text, so ``system`` says what to do with system
    messages: "merge" (prepend them to the first user message), "drop", or "keep" (send them;
    the server then answers INVALID_ARGUMENT).
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if system not in ("merge", "drop", "keep"):
        raise ValueError(f"system={system!r} is not one of merge, drop, keep")
    messages = [{"role": str(m["role"]), "content": content_text(m.get("content"))} for m in prompt]
    if system == "keep":
        return messages
    system_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if system == "merge" and system_text:
        for m in rest:
            if m["role"] == "user":
                m["content"] = f"{system_text}\n\n{m['content']}"
                break
        else:
            rest.insert(0, {"role": "user", "content": system_text})
    return rest


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or (conversational format) the contents of its messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return content_text(completion.get("content"))
    return "\n".join(content_text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant")


def group_by_prompt(conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[list[int]]:
    """Indices of equal prompts, grouped, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        groups.setdefault(json.dumps(list(conv), sort_keys=True), []).append(i)
    return list(groups.values())


@dataclass
class RewardStats:
    """What one scoring call did, for the trainer's logs."""

    judgments: int = 0
    invalid: int = 0
    errors: int = 0
    singletons: int = 0
    #: Reference mode: each item's verdict (A: the completion won), None where the call failed.
    verdicts: list[Verdict | None] = field(default_factory=list)

    @property
    def invalid_fraction(self) -> float:
        return self.invalid / self.judgments if self.judgments else 0.0


class Rewarder:
    """Scores completions through an rmr1 server. Picklable: the gRPC client is made lazily in
    each process (Ray actors, dataloader workers, forked trainers) and never pickled.

    Args:
        addr: The server (``host:port``); default ``$RMR1_ADDR``.
        client: An existing :class:`Client` to use instead (not pickled).
        score: Group mode reward: "win_rate" (in [0, 1]) or "score" (the ranking's own score).
        strategy: Rank strategy: None (auto), "all_pairs" or "knockout".
        both_orders: Reference mode: judge in both orders (removes position bias; 2 generations).
        invalid: Reward of a judgment without any verdict (reference mode), in [0, 1].
        on_error: "raise", or the reward to give items whose judgment failed (logged).
        system: What to do with system messages in prompts; see :func:`prompt_conversation`.
        max_new_tokens, temperature, seed, model: Judge options.
        concurrency: Judgments in flight (reference mode) / Rank calls at once (group mode).
        timeout: Deadline of each call in seconds.
    """

    def __init__(
        self,
        addr: str | None = None,
        *,
        client: Client | None = None,
        score: str = "win_rate",
        strategy: str | None = None,
        both_orders: bool = True,
        invalid: float = 0.5,
        on_error: OnError = "raise",
        system: str = "merge",
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        model: str | None = None,
        concurrency: int = 64,
        timeout: float = 600.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        token: str | None = None,
    ) -> None:
        if score not in ("win_rate", "score"):
            raise ValueError(f"score={score!r} is not one of win_rate, score")
        if isinstance(on_error, str) and on_error != "raise":
            raise ValueError(f"on_error={on_error!r}: use 'raise' or a number (or None)")
        self.addr = addr or os.environ.get("RMR1_ADDR")
        if client is None and not self.addr:
            raise ValueError("no rmr1 server: pass addr= (or client=), or set RMR1_ADDR")
        self.score, self.strategy, self.both_orders, self.invalid = score, strategy, both_orders, invalid
        self.on_error, self.system = on_error, system
        self.judge_options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "model": model,
        }
        self.concurrency, self.timeout, self.retry, self.token = concurrency, timeout, retry, token
        self._client = client
        self._owner_pid = os.getpid() if client is None else None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        with self._lock:
            if self._client is None or (self._owner_pid is not None and self._owner_pid != os.getpid()):
                if not self.addr:
                    raise ValueError("this Rewarder was built around a client that did not survive pickling")
                self._client = Client(self.addr, timeout=self.timeout, retry=self.retry, token=self.token)
                self._owner_pid = os.getpid()
            return self._client

    def _failed(self, error: RMR1Error, what: str) -> float | None:
        if self.on_error == "raise":
            raise error
        logger.warning("rmr1 judgment failed for %s (reward %s): %s", what, self.on_error, error)
        return self.on_error  # type: ignore[return-value]

    def rank_groups(
        self, conversations: Sequence[list[dict[str, str]]], completions: Sequence[str], stats: RewardStats
    ) -> list[float | None]:
        """Group mode: one ``Rank`` per distinct prompt. A prompt with a single completion in the
        call gets the neutral reward (0.5 for win rates, 0.0 for scores)."""
        rewards: list[float | None] = [None] * len(completions)
        groups = group_by_prompt(conversations)
        neutral = 0.5 if self.score == "win_rate" else 0.0

        def rank(group: list[int]):
            return self.client.rank(
                conversations[group[0]], [completions[i] for i in group], strategy=self.strategy,
                **self.judge_options,
            )

        multi = [g for g in groups if len(g) > 1]
        for g in groups:
            if len(g) == 1:
                stats.singletons += 1
                rewards[g[0]] = neutral
        if multi:
            with ThreadPoolExecutor(max_workers=max(1, min(len(multi), self.concurrency))) as pool:
                futures = [pool.submit(rank, g) for g in multi]
                for g, fut in zip(multi, futures):
                    try:
                        ranking = fut.result()
                    except RMR1Error as e:
                        stats.errors += len(g)
                        fallback = self._failed(e, f"the group of {len(g)} completions of prompt #{g[0]}")
                        for i in g:
                            rewards[i] = fallback
                        continue
                    stats.judgments += len(ranking.comparisons)
                    stats.invalid += sum(c.verdict is Verdict.INVALID for c in ranking.comparisons)
                    values = ranking.win_rates if self.score == "win_rate" else ranking.score_values
                    for i, v in zip(g, values):
                        rewards[i] = v
        if stats.singletons:
            logger.debug("%d prompt(s) had a single completion in this call: neutral reward", stats.singletons)
        return rewards

    def against_references(
        self,
        conversations: Sequence[list[dict[str, str]]],
        completions: Sequence[str],
        references: Sequence[Any],
        stats: RewardStats,
    ) -> list[float | None]:
        """Reference mode: P(completion beats reference) for each item, over one JudgeBatch."""
        pairs = [
            {"conversation": c, "response_a": comp, "response_b": ref if isinstance(ref, str) else str(ref)}
            for c, comp, ref in zip(conversations, completions, references)
        ]
        results = self.client.judge_many(
            pairs, concurrency=self.concurrency, both_orders=self.both_orders, include_reasoning=False,
            **self.judge_options,
        )
        rewards: list[float | None] = []
        for i, r in enumerate(results):
            if isinstance(r, RMR1Error):
                stats.errors += 1
                stats.verdicts.append(None)
                rewards.append(self._failed(r, f"completion #{i}"))
                continue
            stats.judgments += 1
            stats.invalid += r.verdict is Verdict.INVALID
            stats.verdicts.append(r.verdict)
            rewards.append(r.preference_a(self.invalid))
        return rewards
