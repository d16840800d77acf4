"""TRL: ``reward_funcs`` callables for ``GRPOTrainer`` backed by an rmr1 server.

Follows TRL v1.9.0 (``trl/trainer/grpo_trainer.py``, ``GRPOTrainer._calculate_rewards``, and
``docs/source/grpo_trainer.md`` "Using a custom reward function"): a custom reward function is
called with keyword arguments only, ``prompts=``, ``completions=``, ``completion_ids=``, every
dataset column but ``prompt`` (one list entry per completion), ``trainer_state=``, ``log_extra=``
and ``log_metric=``; prompts and completions are strings (standard format) or lists of message
dicts (conversational format); it returns one float per completion, or None to leave a
completion to the other reward functions. Rewards are normalised by TRL within each prompt's
group of ``num_generations`` completions. TRL names a callable instance after its ``__name__``
(``get_callable_name``) and requires reward functions to be picklable; both hold here.

    from rmr1_client.trl import RankReward, ReferenceReward
    trainer = GRPOTrainer(model=..., reward_funcs=RankReward("rmr1-host:50051"), ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from .rewards import Rewarder, RewardStats, completion_text, prompt_conversation

__all__ = ["RankReward", "ReferenceReward"]


class _TRLReward(Rewarder):
    __name__ = "rmr1"

    def _inputs(self, prompts: Sequence[Any], completions: Sequence[Any]):
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [prompt_conversation(p, system=self.system) for p in prompts], [completion_text(c) for c in completions]

    @staticmethod
    def _log(stats: RewardStats, log_metric: Callable[[str, float], None] | None) -> None:
        # Every process logs the same keys (TRL requires it in distributed runs).
        if log_metric is not None:
            log_metric("rmr1/invalid_fraction", stats.invalid_fraction)
            log_metric("rmr1/errors", float(stats.errors))


class RankReward(_TRLReward):
    """Ranks the completions of each prompt against each other with rmr1's ``Rank``.

    Completions of one prompt are recognised by equal prompts within a call (TRL passes each
    prompt ``num_generations`` times); each group is one ``Rank`` call, all groups concurrently.
    Reward: the completion's soft win rate over its comparisons (``score="win_rate"``, in [0, 1])
    or the ranking's score (``score="score"``: Bradley-Terry log-strength, mean 0 per group).
    A prompt that appears once in a call (a group split across processes) gets the neutral
    reward. See :class:`rmr1_client.rewards.Rewarder` for the options.
    """

    __name__ = "rmr1_rank"

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        conversations, texts = self._inputs(prompts, completions)
        stats = RewardStats()
        rewards = self.rank_groups(conversations, texts, stats)
        self._log(stats, log_metric)
        return rewards


class ReferenceReward(_TRLReward):
    """P(completion beats the reference answer), judged by rmr1 (both orders by default).

    The reference comes from the dataset column ``reference_column`` (default "reference"),
    which TRL passes as a keyword argument with one entry per completion. All completions of a
    call go over one ``JudgeBatch`` stream.
    """

    __name__ = "rmr1_reference"

    def __init__(self, addr: str | None = None, *, reference_column: str = "reference", **options: Any) -> None:
        super().__init__(addr, **options)
        self.reference_column = reference_column

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if self.reference_column not in kwargs:
            raise KeyError(
                f"the dataset has no column {self.reference_column!r} (columns passed: {sorted(kwargs)}); "
                "set reference_column="
            )
        references = kwargs[self.reference_column]
        conversations, texts = self._inputs(prompts, completions)
        stats = RewardStats()
        rewards = self.against_references(conversations, texts, references, stats)
        self._log(stats, log_metric)
        return rewards
