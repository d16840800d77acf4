"""veRL: custom reward functions (reference-answer mode) backed by an rmr1 server.

Follows veRL v0.7.0 (``docs/preparation/reward_function.rst``; ``verl/trainer/ppo/reward.py``
``get_custom_reward_fn``; ``verl/workers/reward_manager/naive.py`` and ``batch.py``):

* ``compute_score(data_source, solution_str, ground_truth, extra_info)`` — the per-sample
  function the "naive" reward manager (and the experimental reward loop) calls with keyword
  arguments. It returns a dict whose "score" is the reward; the other keys go to
  ``reward_extra_info`` and the logs (the same keys for every sample, as veRL requires).
* ``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`` — the batched
  variant for ``reward_model.reward_manager=batch``; one ``JudgeBatch`` stream per call.

veRL merges ``custom_reward_function.reward_kwargs`` from the config into every call; the
options below are read from there (``rmr1_addr`` etc.), else from ``$RMR1_ADDR``. veRL passes
no prompt to reward functions, so the question is read from ``extra_info[question_key]``
(veRL's own preprocessing scripts, e.g. ``examples/data_preprocess/gsm8k.py``, store it as
"question"); a list of messages there is used as the conversation.

    custom_reward_function.path=pkg://rmr1_client.verl
    custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.rmr1_addr=rmr1-host:50051

The reward is P(solution beats ground truth) in [0, 1] (both orders, so position bias cancels).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from .rewards import Rewarder, RewardStats, prompt_conversation
from .types import Verdict

__all__ = ["compute_score", "compute_score_batch"]

_rewarders: dict[tuple, Rewarder] = {}
_lock = threading.Lock()


def _rewarder(
    rmr1_addr: str | None,
    rmr1_max_new_tokens: int | None,
    rmr1_both_orders: bool,
    rmr1_timeout: float,
    rmr1_on_error: Any,
    rmr1_model: str | None,
    rmr1_concurrency: int,
) -> Rewarder:
    addr = rmr1_addr or os.environ.get("RMR1_ADDR")
    key = (os.getpid(), addr, rmr1_max_new_tokens, rmr1_both_orders, rmr1_timeout, rmr1_on_error, rmr1_model,
           rmr1_concurrency)
    with _lock:
        if key not in _rewarders:
            _rewarders[key] = Rewarder(
                addr, max_new_tokens=rmr1_max_new_tokens, both_orders=rmr1_both_orders, timeout=rmr1_timeout,
                on_error=rmr1_on_error, model=rmr1_model, concurrency=rmr1_concurrency,
            )
        return _rewarders[key]


def _conversation(extra_info: Any, question_key: str) -> list[dict[str, str]]:
    question = (extra_info or {}).get(question_key) if hasattr(extra_info, "get") else None
    if question is None:
        raise KeyError(
            f"extra_info has no {question_key!r}: the judge needs the question; store it in extra_info "
            "when preprocessing the data, or set question_key"
        )
    if not isinstance(question, str):
        question = list(question)  # numpy arrays of message dicts come out of parquet
    return prompt_conversation(question)


def _result(reward: float | None, verdict: Verdict | None) -> dict[str, float]:
    return {
        "score": float("nan") if reward is None else float(reward),
        "rmr1_win": {Verdict.A: 1.0, Verdict.B: 0.0}.get(verdict, 0.5),  # type: ignore[arg-type]
        "rmr1_invalid": 1.0 if verdict in (Verdict.INVALID, None) else 0.0,
    }


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any],
    *,
    rmr1_addr: str | None = None,
    question_key: str = "question",
    rmr1_max_new_tokens: int | None = None,
    rmr1_both_orders: bool = True,
    rmr1_timeout: float = 600.0,
    rmr1_on_error: Any = "raise",
    rmr1_model: str | None = None,
    rmr1_concurrency: int = 64,
    **_veRL_extras: Any,
) -> list[dict[str, float]]:
    """One dict per sample: "score" = P(solution beats ground truth); "rmr1_win" = the text
    verdict (1 won, 0 lost, 0.5 none); "rmr1_invalid" = 1 when the judge gave no verdict."""
    rewarder = _rewarder(rmr1_addr, rmr1_max_new_tokens, rmr1_both_orders, rmr1_timeout, rmr1_on_error, rmr1_model,
                         rmr1_concurrency)
    conversations = [_conversation(e, question_key) for e in extra_infos]
    stats = RewardStats()
    rewards = rewarder.against_references(conversations, list(solution_strs), list(ground_truths), stats)
    return [_result(r, v) for r, v in zip(rewards, stats.verdicts)]


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    **kwargs: Any,
) -> dict[str, float]:
    """The per-sample reward function; see :func:`compute_score_batch` for the options and result."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
