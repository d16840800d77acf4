"""The TRL adapter, called exactly as TRL v1.9.0's GRPOTrainer._calculate_rewards calls it."""

from __future__ import annotations

import inspect
import math
import pickle

import grpc
import pytest
from conftest import TOKENS

from rmr1_client import RMR1Error
from rmr1_client.trl import RankReward, ReferenceReward

G = 3  # num_generations


def call_like_trl(reward_func, inputs, prompts, completions, metrics=None):
    """GRPOTrainer._calculate_rewards (v1.9.0), minus torch: every column but prompt/completion/
    completion_ids as a list, plus trainer_state, log_extra and log_metric, all as keywords."""
    keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]
    reward_kwargs = {key: [example[key] for example in inputs] for key in keys}
    reward_kwargs["trainer_state"] = object()
    reward_kwargs["log_extra"] = lambda column, values: None
    reward_kwargs["log_metric"] = (lambda name, value: metrics.setdefault(name, value)) if metrics is not None \
        else (lambda name, value: None)
    completion_ids = [[1, 2, 3] for _ in completions]
    out = reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)
    return [r if r is not None else math.nan for r in out]


def _batch():
    """Two prompts x G completions, as TRL's RepeatSampler lays them out, with a reference column."""
    questions = ["w5 w6 w7", "w30 w31"]
    completions = [["w40", "w41 w42", ""], ["w50 w51", "w52", "w53 w54 w55"]]
    inputs, prompts, comps = [], [], []
    for q, cs in zip(questions, completions):
        for c in cs:
            inputs.append({"prompt": q, "reference": "w9 w10", "task": "chat"})
            prompts.append(q)
            comps.append(c)
    return inputs, prompts, comps


def test_signatures_and_names():
    for cls, name in ((RankReward, "rmr1_rank"), (ReferenceReward, "rmr1_reference")):
        params = inspect.signature(cls.__call__).parameters
        assert list(params)[:3] == ["self", "prompts", "completions"]
        assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert cls("127.0.0.1:1").__name__ == name  # TRL's get_callable_name
        assert not inspect.iscoroutinefunction(cls("127.0.0.1:1"))  # TRL runs it synchronously


def test_rank_reward_is_the_servers_win_rate_per_group(server, client):
    inputs, prompts, comps = _batch()
    metrics = {}
    reward = RankReward(server.addr, max_new_tokens=TOKENS)
    rewards = call_like_trl(reward, inputs, prompts, comps, metrics)
    assert len(rewards) == len(comps) and all(isinstance(r, float) for r in rewards)
    for g in range(2):
        ranking = client.rank(prompts[g * G], comps[g * G:(g + 1) * G], max_new_tokens=TOKENS)
        assert rewards[g * G:(g + 1) * G] == pytest.approx(ranking.win_rates, abs=1e-5)
    assert len(set(round(r, 4) for r in rewards)) > 2  # not a constant
    assert set(metrics) == {"rmr1/invalid_fraction", "rmr1/errors"} and metrics["rmr1/errors"] == 0.0
    assert 0.0 <= metrics["rmr1/invalid_fraction"] <= 1.0

    scores = call_like_trl(RankReward(server.addr, max_new_tokens=TOKENS, score="score"), inputs, prompts, comps)
    ranking = client.rank(prompts[0], comps[:G], max_new_tokens=TOKENS)
    assert scores[:G] == pytest.approx(ranking.score_values, abs=1e-4)


def test_conversational_format_and_system_messages(server, client):
    system = {"role": "system", "content": "w2 w3"}
    prompt = [system, {"role": "user", "content": "w5 w6 w7"}]
    comps = [[{"role": "assistant", "content": c}] for c in ("w40", "w41 w42", "")]
    inputs = [{"prompt": prompt} for _ in comps]
    rewards = call_like_trl(RankReward(server.addr, max_new_tokens=TOKENS), inputs, [prompt] * 3, comps)
    merged = [{"role": "user", "content": "w2 w3\n\nw5 w6 w7"}]
    expected = client.rank(merged, ["w40", "w41 w42", ""], max_new_tokens=TOKENS).win_rates
    assert rewards == pytest.approx(expected, abs=1e-5)
    dropped = call_like_trl(RankReward(server.addr, max_new_tokens=TOKENS, system="drop"), inputs, [prompt] * 3,
                            comps)
    expected = client.rank("w5 w6 w7", ["w40", "w41 w42", ""], max_new_tokens=TOKENS).win_rates
    assert dropped == pytest.approx(expected, abs=1e-5)


def test_a_lone_completion_gets_the_neutral_reward(server):
    rewards = call_like_trl(RankReward(server.addr, max_new_tokens=TOKENS), [{"prompt": "w5"}], ["w5"], ["w6"])
    assert rewards == [0.5]


def test_reference_reward_is_p_completion_beats_reference(server, client):
    inputs, prompts, comps = _batch()
    rewards = call_like_trl(ReferenceReward(server.addr, max_new_tokens=TOKENS), inputs, prompts, comps)
    for p, c, r in zip(prompts, comps, rewards):
        j = client.judge(p, c, "w9 w10", max_new_tokens=TOKENS, both_orders=True)
        assert r == pytest.approx(j.preference_a(), abs=1e-5)
    assert len(set(round(r, 4) for r in rewards)) > 2
    custom = ReferenceReward(server.addr, reference_column="task", max_new_tokens=TOKENS)
    assert len(call_like_trl(custom, inputs, prompts, comps)) == len(comps)
    with pytest.raises(KeyError, match="answer"):
        call_like_trl(ReferenceReward(server.addr, reference_column="answer"), inputs, prompts, comps)


def test_errors_raise_or_become_the_given_reward(server):
    prompt = [{"role": "system", "content": "w2"}, {"role": "user", "content": "w5"}]
    inputs = [{"prompt": prompt}] * 2
    with pytest.raises(RMR1Error) as info:
        call_like_trl(RankReward(server.addr, system="keep", max_new_tokens=TOKENS), inputs, [prompt] * 2,
                      ["a", "b"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    skipped = call_like_trl(RankReward(server.addr, system="keep", on_error=None, max_new_tokens=TOKENS), inputs,
                            [prompt] * 2, ["a", "b"])
    assert all(math.isnan(r) for r in skipped)  # None: TRL leaves these to other reward functions
    zero = call_like_trl(ReferenceReward(server.addr, system="keep", on_error=0.0, max_new_tokens=TOKENS),
                         [{"prompt": prompt, "reference": "c"}] * 2, [prompt] * 2, ["a", "b"])
    assert zero == [0.0, 0.0]


def test_reward_functions_pickle(server):
    reward = RankReward(server.addr, max_new_tokens=TOKENS)
    inputs, prompts, comps = _batch()
    before = call_like_trl(reward, inputs, prompts, comps)
    again = pickle.loads(pickle.dumps(reward))
    assert call_like_trl(again, inputs, prompts, comps) == pytest.approx(before, abs=1e-5)
