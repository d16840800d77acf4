"""rmr1-client: a typed Python client of the rmr1 judge server, and RLHF reward adapters.

    from rmr1_client import Client
    with Client("127.0.0.1:50051") as rm:
        j = rm.judge("What is 2+2?", "4", "5", both_orders=True)
        print(j.verdict, j.prob_a)

Adapters: :mod:`rmr1_client.trl` (GRPOTrainer ``reward_funcs``), :mod:`rmr1_client.verl`
(``compute_score``), :mod:`rmr1_client.openrlhf_bridge` (OpenRLHF's remote reward-model HTTP API).
"""

from ._core import NO_RETRY, RetryPolicy
from .aio import AsyncClient
from .client import Client
from .errors import RETRYABLE_CODES, RMR1Error
from .types import (
    CandidateScore,
    Comparison,
    Judgment,
    ModelInfo,
    OrderJudgment,
    Ranking,
    RubricItem,
    TaskType,
    Timings,
    Usage,
    Verdict,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "CandidateScore",
    "Client",
    "Comparison",
    "Judgment",
    "ModelInfo",
    "NO_RETRY",
    "OrderJudgment",
    "RETRYABLE_CODES",
    "RMR1Error",
    "Ranking",
    "RetryPolicy",
    "RubricItem",
    "TaskType",
    "Timings",
    "Usage",
    "Verdict",
]
