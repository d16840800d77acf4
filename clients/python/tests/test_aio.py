"""The asyncio client gives what the sync client gives."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import TOKENS

from rmr1_client import AsyncClient, RMR1Error

Q = "w5 w6 w7 w8"


def run(coro):
    return asyncio.run(coro)


def test_async_calls_match_sync_ones(server, client):
    pairs = [{"question": f"w{5 + i} w{40 + i}", "response_a": f"w{60 + i}", "response_b": "w9"} for i in range(5)]

    async def calls():
        async with AsyncClient(server.addr, timeout=60) as c:
            await c.wait_until_serving(timeout=5)
            return await asyncio.gather(
                c.health(),
                c.models(),
                c.judge(Q, "w9 w10", "w11", max_new_tokens=TOKENS, both_orders=True),
                c.judge_many(
                    # a bad item among good ones
                    [pairs[0], pairs[1], {"question": Q, "response_a": "a", "response_b": "b", "max_new_tokens": 0},
                     pairs[3]],
                    max_new_tokens=TOKENS, concurrency=2,
                ),
                c.rank(Q, ["w20", "w21 w22", "w23"], max_new_tokens=TOKENS),
            )

    health, models, j, many, ranking = run(calls())
    assert health == "SERVING" and models == client.models()
    sync = client.judge(Q, "w9 w10", "w11", max_new_tokens=TOKENS, both_orders=True)
    assert (j.raw_output, j.verdict, len(j.orders)) == (sync.raw_output, sync.verdict, 2)
    assert j.prob_a == pytest.approx(sync.prob_a, abs=1e-5)
    assert [type(r).__name__ for r in many] == ["Judgment", "Judgment", "RMR1Error", "Judgment"]
    assert many[2].code == grpc.StatusCode.INVALID_ARGUMENT
    for got, pair in zip([many[0], many[1], many[3]], [pairs[0], pairs[1], pairs[3]]):
        assert got.raw_output == client.judge(**pair, max_new_tokens=TOKENS).raw_output
    sync_rank = client.rank(Q, ["w20", "w21 w22", "w23"], max_new_tokens=TOKENS)
    assert ranking.win_rates == pytest.approx(sync_rank.win_rates, abs=1e-5)


def test_async_errors_and_deadlines(server):
    async def calls():
        async with AsyncClient(server.addr, timeout=60) as c:
            with pytest.raises(RMR1Error) as bad:
                await c.judge(conversation=[{"role": "system", "content": "x"}, {"role": "user", "content": Q}],
                              response_a="a", response_b="b", max_new_tokens=TOKENS)
            with pytest.raises(RMR1Error) as late:
                await c.judge(Q, "a", "b", max_new_tokens=1500, timeout=0.05)
            return bad.value, late.value

    bad, late = run(calls())
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "system" in bad.message and bad.attempts == 1
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED
