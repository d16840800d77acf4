"""The veRL adapter, loaded and called as veRL v0.7.0 loads and calls a custom reward function."""

from __future__ import annotations

import importlib
import inspect
import math
from functools import partial

import grpc
import pytest
from conftest import TOKENS

from rmr1_client import RMR1Error

KEYS = {"score", "rmr1_win", "rmr1_invalid"}


def load_like_verl(name, reward_kwargs):
    """verl/utils/import_utils.load_module("pkg://rmr1_client.verl") + trainer/ppo/reward.py
    get_custom_reward_fn: the function, with the config's reward_kwargs merged into every call."""
    module = importlib.import_module("pkg://rmr1_client.verl"[len("pkg://"):].replace("/", "."))
    raw_fn = getattr(module, name)

    def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
        return raw_fn(*args, **{**kwargs, **extra_kwargs})

    assert not inspect.iscoroutinefunction(raw_fn)
    return partial(_call_with_kwargs, raw_fn, reward_kwargs)


def test_signatures():
    from rmr1_client.verl import compute_score, compute_score_batch

    assert list(inspect.signature(compute_score).parameters)[:4] == [
        "data_source", "solution_str", "ground_truth", "extra_info"]
    assert list(inspect.signature(compute_score_batch).parameters)[:4] == [
        "data_sources", "solution_strs", "ground_truths", "extra_infos"]


def test_compute_score_as_the_naive_reward_manager_calls_it(server, client):
    fn = load_like_verl("compute_score", {"rmr1_addr": server.addr, "rmr1_max_new_tokens": TOKENS})
    got = []
    for k in range(4):
        # NaiveRewardManager adds num_turns and rollout_reward_scores to extra_info.
        extra = {"question": f"w{5 + k} w6", "index": k, "num_turns": None, "rollout_reward_scores": {}}
        out = fn(data_source="openai/gsm8k", solution_str=f"w{20 + k}", ground_truth="w9 w10", extra_info=extra)
        assert set(out) == KEYS and all(isinstance(v, float) for v in out.values())
        j = client.judge(f"w{5 + k} w6", f"w{20 + k}", "w9 w10", max_new_tokens=TOKENS, both_orders=True)
        assert out["score"] == pytest.approx(j.preference_a(), abs=1e-5)
        assert out["rmr1_win"] == {"A": 1.0, "B": 0.0}.get(j.verdict.value, 0.5)
        assert out["rmr1_invalid"] == (1.0 if j.verdict.value == "INVALID" else 0.0)
        got.append(out["score"])
    assert len(set(round(s, 4) for s in got)) > 1


def test_compute_score_batch_as_the_batch_reward_manager_calls_it(server, client):
    fn = load_like_verl("compute_score_batch", {"rmr1_addr": server.addr, "rmr1_max_new_tokens": TOKENS})
    n = 5
    extras = [{"question": f"w{5 + k} w7", "rollout_reward_scores": {}} for k in range(n)]
    extras[3] = {"question": [{"role": "user", "content": "w8 w7"}]}  # messages work too
    out = fn(data_sources=["d"] * n, solution_strs=[f"w{30 + k}" for k in range(n)], ground_truths=[42] * n,
             extra_infos=extras)
    assert len(out) == n and all(set(o) == KEYS for o in out)
    j = client.judge("w8 w7", "w33", "42", max_new_tokens=TOKENS, both_orders=True)
    assert out[3]["score"] == pytest.approx(j.preference_a(), abs=1e-5)


def test_missing_question_and_server_errors(server):
    fn = load_like_verl("compute_score", {"rmr1_addr": server.addr, "rmr1_max_new_tokens": TOKENS})
    with pytest.raises(KeyError, match="question"):
        fn(data_source="d", solution_str="a", ground_truth="b", extra_info={"index": 0})
    bad = {"question": "w5"}
    with pytest.raises(RMR1Error) as info:
        load_like_verl("compute_score", {"rmr1_addr": server.addr, "rmr1_max_new_tokens": 0})(
            data_source="d", solution_str="a", ground_truth="b", extra_info=bad)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    soft = load_like_verl("compute_score", {"rmr1_addr": server.addr, "rmr1_max_new_tokens": 0, "rmr1_on_error": 0.0})
    out = soft(data_source="d", solution_str="a", ground_truth="b", extra_info=bad)
    assert out == {"score": 0.0, "rmr1_win": 0.5, "rmr1_invalid": 1.0}
    assert not math.isnan(out["score"])


def test_address_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("RMR1_ADDR", server.addr)
    from rmr1_client.verl import compute_score

    out = compute_score("d", "w20", "w9", {"question": "w5"}, rmr1_max_new_tokens=TOKENS)
    assert set(out) == KEYS
