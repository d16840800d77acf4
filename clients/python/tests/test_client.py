"""Every wrapper of the sync client against a real rmr1 server over the tiny judge."""

from __future__ import annotations

import math
import pickle
import time

import grpc
import pytest
from conftest import TOKENS

from rmr1_client import Client, Judgment, Ranking, RetryPolicy, RMR1Error, TaskType, Verdict

Q = "w5 w6 w7 w8"


def test_health_and_models(client, server, tiny_model):
    assert client.health() == "SERVING"
    [m] = client.models()
    assert (m.name, m.family, m.architecture, m.context_length, m.dtype) == ("tiny", "instruct", "qwen2", 2048, "f32")
    assert m.is_default and m.source == tiny_model.name  # a local path: its last component only (not admin)


def test_judge_returns_the_full_judgment(client):
    j = client.judge(Q, "w9 w10", "w11", max_new_tokens=TOKENS, seed=3)
    assert isinstance(j, Judgment)
    assert j.model == "tiny"
    assert j.verdict in (Verdict.A, Verdict.B, Verdict.INVALID)
    assert j.prob_a is not None and j.prob_b is not None
    assert math.isclose(j.prob_a + j.prob_b, 1.0, rel_tol=1e-9)
    assert j.usage.prompt_tokens > 100  # the RM-R1 prompt around the pair
    assert 1 <= j.usage.completion_tokens <= TOKENS
    assert j.raw_output  # include_reasoning defaults to True
    assert j.task_type in tuple(TaskType)
    assert j.timings.total_seconds > 0
    [order] = j.orders
    assert not order.swapped and order.raw_output == j.raw_output and order.finish_reason in ("stop", "length")


def test_judge_is_deterministic_and_question_equals_conversation(client):
    a = client.judge(Q, "w9 w10", "w11", max_new_tokens=TOKENS)
    b = client.judge(conversation=[{"role": "user", "content": Q}], response_a="w9 w10", response_b="w11",
                     max_new_tokens=TOKENS)
    assert (a.raw_output, a.verdict) == (b.raw_output, b.verdict)
    assert a.prob_a == pytest.approx(b.prob_a, abs=1e-7)


def test_judge_without_reasoning_has_no_text(client):
    j = client.judge(Q, "w9", "w11", max_new_tokens=TOKENS, include_reasoning=False)
    assert j.raw_output == "" and j.rubric == [] and j.justification == ""
    assert j.prob_a is not None and j.usage.prompt_tokens > 0


def test_both_orders(client):
    j = client.judge(Q, "w9 w10", "w11", max_new_tokens=TOKENS, both_orders=True)
    assert [o.swapped for o in j.orders] == [False, True]
    assert j.usage.completion_tokens == sum(o.usage.completion_tokens for o in j.orders)
    assert j.usage.prompt_tokens == sum(o.usage.prompt_tokens for o in j.orders)


def test_empty_reply_is_judged_not_refused(client):
    j = client.judge(Q, "", "w11", max_new_tokens=TOKENS)
    assert j.verdict is not Verdict.UNSPECIFIED and j.prob_a is not None


def test_two_whole_conversations(client):
    j = client.judge(
        conversation_a=[{"role": "user", "content": Q}, {"role": "assistant", "content": "w9"}],
        conversation_b=[{"role": "user", "content": Q}, {"role": "assistant", "content": "w11"}],
        max_new_tokens=TOKENS,
    )
    same = client.judge(Q, "w9", "w11", max_new_tokens=TOKENS)
    assert j.raw_output == same.raw_output and j.prob_a == pytest.approx(same.prob_a, abs=1e-7)


@pytest.mark.parametrize(
    "kwargs, code, words",
    [
        ({"conversation": [{"role": "system", "content": "be brief"}, {"role": "user", "content": Q}]},
         grpc.StatusCode.INVALID_ARGUMENT, "system"),
        ({"question": Q, "max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
        ({"question": Q, "temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"question": Q, "model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
    ],
)
def test_errors_keep_code_and_message_and_are_not_retried(client, kwargs, code, words):
    kwargs = {"response_a": "w9", "response_b": "w11", "max_new_tokens": TOKENS, **kwargs}
    started = time.monotonic()
    with pytest.raises(RMR1Error) as info:
        client.judge(**kwargs)
    assert info.value.code == code
    assert words in info.value.message
    assert info.value.attempts == 1 and time.monotonic() - started < 5
    assert str(info.value).startswith(code.name)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.code, again.message) == (info.value.code, info.value.message)


def test_client_side_misuse_is_a_value_error(client):
    with pytest.raises(ValueError, match="response_a and response_b"):
        client.judge(Q, "w9")
    with pytest.raises(ValueError, match="exactly one"):
        client.judge(Q, "w9", "w11", conversation=[{"role": "user", "content": Q}])
    with pytest.raises(ValueError, match="role"):
        client.judge(conversation=[{"role": "tool", "content": "x"}], response_a="a", response_b="b")
    with pytest.raises(ValueError, match="unknown judge argument"):
        client.judge_many([{"question": Q, "response_a": "a", "response_b": "b", "answer": "c"}])


def _pairs(n):
    return [{"question": f"w{5 + i} w{40 + i}", "response_a": f"w{60 + i}", "response_b": "w9 w10"} for i in range(n)]


def test_judge_many_matches_judge_in_input_order(client):
    pairs = _pairs(10)
    results = client.judge_many(pairs, concurrency=4, max_new_tokens=TOKENS)
    assert len(results) == len(pairs)
    probs = sorted(r.prob_a for r in results)
    assert min(b - a for a, b in zip(probs, probs[1:])) > 1e-4  # items are told apart by their P(A)
    assert len({r.verdict for r in results}) >= 2
    for pair, got in zip(pairs, results):
        assert isinstance(got, Judgment)
        single = client.judge(**pair, max_new_tokens=TOKENS)
        assert (got.raw_output, got.verdict) == (single.raw_output, single.verdict)
        # Batched forward passes differ from single ones in the last bits only.
        assert got.prob_a == pytest.approx(single.prob_a, abs=1e-5)


def test_judge_many_surfaces_per_item_errors(client):
    pairs = _pairs(6)
    pairs[1] = {**pairs[1], "max_new_tokens": 0}
    pairs[4] = {"conversation": [{"role": "assistant", "content": "hi"}], "response_a": "a", "response_b": "b"}
    results = client.judge_many(pairs, concurrency=3, max_new_tokens=TOKENS)
    assert [type(r).__name__ for r in results] == ["Judgment", "RMR1Error", "Judgment", "Judgment", "RMR1Error",
                                                   "Judgment"]
    assert results[1].code == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in results[1].message
    assert results[4].code == grpc.StatusCode.INVALID_ARGUMENT and results[4].request_id == "4"
    assert results[1].attempts == 1


def test_judge_many_per_pair_options_override_shared_ones(client):
    [short, long_] = client.judge_many(
        [{"question": Q, "response_a": "w9", "response_b": "w11"},
         {"question": Q, "response_a": "w9", "response_b": "w11", "max_new_tokens": TOKENS + 8}],
        max_new_tokens=4, include_reasoning=False,
    )
    assert short.usage.completion_tokens <= 4 < long_.usage.completion_tokens
    assert client.judge_many([]) == []


def test_rank(client):
    candidates = ["w20 w21", "w22", "", "w23 w24 w25"]
    r = client.rank(Q, candidates, max_new_tokens=TOKENS)
    assert isinstance(r, Ranking)
    assert sorted(r.order) == [0, 1, 2, 3] and r.method == "bradley_terry"
    assert [s.index for s in r.scores] == [0, 1, 2, 3]
    assert len(r.comparisons) == 4 * 3  # all pairs, both orders
    assert all(0.0 <= w <= 1.0 for w in r.win_rates) and all(s.comparisons == 6 for s in r.scores)
    assert abs(sum(r.score_values)) < 1e-6  # Bradley-Terry log-strengths have mean 0
    by_score = sorted(range(4), key=lambda i: -r.score_values[i])
    assert r.score_values[r.order[0]] == r.score_values[by_score[0]]
    assert r.usage.completion_tokens > 0
    k = client.rank([{"role": "user", "content": Q}], candidates, strategy="knockout", max_new_tokens=TOKENS)
    assert k.method == "knockout" and sorted(k.order) == [0, 1, 2, 3]


def test_rank_errors(client):
    with pytest.raises(RMR1Error) as info:
        client.rank(Q, ["only one"], max_new_tokens=TOKENS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "at least 2" in info.value.message
    with pytest.raises(ValueError, match="strategy"):
        client.rank(Q, ["a", "b"], strategy="swiss")


def test_deadlines(client):
    with pytest.raises(RMR1Error) as info:
        client.judge(Q, "w9", "w11", max_new_tokens=1500, timeout=0.05)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.attempts == 1
    results = client.judge_many(_pairs(3), max_new_tokens=1500, timeout=0.05)
    assert [r.code for r in results] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3


def test_token_is_sent_as_metadata(server):
    with Client(f"http://{server.addr}", token="secret", timeout=30) as c:
        assert c._metadata == (("authorization", "Bearer secret"),)
        assert c.judge(Q, "w9", "w11", max_new_tokens=2).usage.completion_tokens <= 2


def test_unreachable_server_is_retried_then_unavailable():
    from rmr1_server import free_port

    policy = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
    with Client(f"127.0.0.1:{free_port()}", timeout=2, retry=policy) as c:
        with pytest.raises(RMR1Error) as info:
            c.judge(Q, "a", "b")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 3
        [err] = c.judge_many([{"question": Q, "response_a": "a", "response_b": "b"}])
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.attempts == 3
        with pytest.raises(RMR1Error) as info:
            c.health()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_wait_until_serving(client):
    from rmr1_server import free_port

    client.wait_until_serving(timeout=5)
    with Client(f"127.0.0.1:{free_port()}") as nobody:
        started = time.monotonic()
        with pytest.raises(RMR1Error) as info:
            nobody.wait_until_serving(timeout=0.5)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "unreachable" in info.value.message
        assert time.monotonic() - started < 5
