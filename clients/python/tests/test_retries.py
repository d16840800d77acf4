"""Retries with backoff on UNAVAILABLE (a server started late) and RESOURCE_EXHAUSTED (a full
queue), never on anything else."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from rmr1_server import Rmr1Server, free_port

from rmr1_client import NO_RETRY, AsyncClient, Client, Judgment, RetryPolicy, RMR1Error

PATIENT = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.4)
Q = "w5 w6 w7"
DELAY = 1.5


def _start_later(model, port, delay=DELAY):
    server = Rmr1Server(model, port=port)
    timer = threading.Timer(delay, server.start)
    timer.start()
    return server, timer


def test_calls_wait_for_a_server_started_late(tiny_model):
    port = free_port()
    with Client(f"127.0.0.1:{port}", timeout=30, retry=NO_RETRY) as impatient:
        with pytest.raises(RMR1Error) as info:
            impatient.judge(Q, "w9", "w10", max_new_tokens=4)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 1
    server, timer = _start_later(tiny_model, port)
    try:
        started = time.monotonic()
        with Client(f"127.0.0.1:{port}", timeout=30, retry=PATIENT) as c, ThreadPoolExecutor(3) as pool:
            one = pool.submit(c.judge, Q, "w9", "w10", max_new_tokens=4)
            many = pool.submit(c.judge_many, [{"question": Q, "response_a": "w9", "response_b": f"w{k}"}
                                              for k in range(10, 14)], max_new_tokens=4)
            ranked = pool.submit(c.rank, Q, ["w9", "w10", "w11"], max_new_tokens=4)
            assert isinstance(one.result(), Judgment)
            assert all(isinstance(r, Judgment) for r in many.result())
            assert sorted(ranked.result().order) == [0, 1, 2]
            assert c.models()[0].name == "tiny"
        assert time.monotonic() - started >= DELAY
    finally:
        timer.join()
        server.stop()


def test_async_client_waits_for_a_server_started_late(tiny_model):
    port = free_port()
    server, timer = _start_later(tiny_model, port, delay=1.0)

    async def run():
        async with AsyncClient(f"127.0.0.1:{port}", timeout=30, retry=PATIENT) as c:
            j, many = await asyncio.gather(
                c.judge(Q, "w9", "w10", max_new_tokens=4),
                c.judge_many([{"question": Q, "response_a": "w9", "response_b": "w10"}] * 3, max_new_tokens=4),
            )
            return j, many

    try:
        j, many = asyncio.run(run())
        assert isinstance(j, Judgment) and all(isinstance(r, Judgment) for r in many)
    finally:
        timer.join()
        server.stop()


@pytest.fixture(scope="module")
def cramped(tiny_model):
    """A server that refuses work beyond 1 pending request with RESOURCE_EXHAUSTED."""
    with Rmr1Server(tiny_model, extra_args=("--max-pending-requests", "1")) as s:
        yield s


def _burst(client, n=6):
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.judge, Q, "w9", f"w{10 + k}", max_new_tokens=120) for k in range(n)]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except RMR1Error as e:
                out.append(e)
        return out


def test_resource_exhausted_is_retried(cramped):
    with Client(cramped.addr, timeout=30, retry=NO_RETRY) as c:
        refused = [r for r in _burst(c) if isinstance(r, RMR1Error)]
        assert refused, "the cramped server should refuse some of a burst"
        assert {e.code for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all(e.attempts == 1 for e in refused)
        items = c.judge_many([{"question": Q, "response_a": "w9", "response_b": f"w{k}"} for k in range(6)],
                             max_new_tokens=120, concurrency=6)
        assert any(isinstance(r, RMR1Error) and r.code == grpc.StatusCode.RESOURCE_EXHAUSTED for r in items)
    with Client(cramped.addr, timeout=30, retry=PATIENT) as c:
        assert all(isinstance(r, Judgment) for r in _burst(c))
        items = c.judge_many([{"question": Q, "response_a": "w9", "response_b": f"w{k}"} for k in range(6)],
                             max_new_tokens=120, concurrency=6)
        assert all(isinstance(r, Judgment) for r in items)
