#!/usr/bin/env python3
"""Judgments/s through ``judge_many`` (one JudgeBatch stream) vs ``judge`` in a thread pool.

    python clients/python/benchmarks/judge_throughput.py                  # tiny random model
    python clients/python/benchmarks/judge_throughput.py --addr HOST:PORT # any running server

Both sides send the same pairs to the same server with the same number in flight; runs
alternate and the median of ``--repeats`` is reported, so load from other processes hits both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rmr1_client import Client, RMR1Error  # noqa: E402


def pairs(n: int) -> list[dict]:
    return [
        {"question": f"w{5 + i % 60} w{7 + (i * 7) % 60} w{9 + (i * 13) % 60}", "response_a": f"w{20 + i % 50} w11",
         "response_b": f"w{30 + (i * 3) % 50}"}
        for i in range(n)
    ]


def via_judge_many(client: Client, items: list[dict], concurrency: int, options: dict) -> float:
    started = time.perf_counter()
    results = client.judge_many(items, concurrency=concurrency, **options)
    elapsed = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, RMR1Error)]
    if errors:
        raise SystemExit(f"judge_many: {len(errors)} errors, first: {errors[0]}")
    return len(items) / elapsed


def via_thread_pool(client: Client, items: list[dict], concurrency: int, options: dict) -> float:
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(lambda p: client.judge(**p, **options), items))
        return len(items) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", help="a running rmr1 server (default: start one over a tiny random model)")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--concurrency", default="8,32,64", help="comma-separated in-flight counts")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--both-orders", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    options = {"max_new_tokens": args.max_new_tokens, "both_orders": args.both_orders, "include_reasoning": False}
    items = pairs(args.pairs)
    with ExitStack() as stack:
        addr = args.addr
        if addr is None:
            from rmr1_server import Rmr1Server
            from tiny_model import JUDGE_SPEC, write_tiny_model

            model = write_tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory())), JUDGE_SPEC)
            addr = stack.enter_context(Rmr1Server(model)).addr
        client = stack.enter_context(Client(addr, timeout=600))
        [model_info] = client.models()[:1]
        via_judge_many(client, items[:64], 64, options)  # warm-up
        print(f"server {addr}, model {model_info.name} ({model_info.quantization}), {args.pairs} pairs, "
              f"max_new_tokens {args.max_new_tokens}, both_orders {args.both_orders}, median of {args.repeats}")
        print(f"| {'in flight':>9} | {'judge_many j/s':>14} | {'judge x threads j/s':>19} | {'ratio':>5} |")
        print(f"|{'-' * 11}|{'-' * 16}|{'-' * 21}|{'-' * 7}|")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            many, pool = [], []
            for _ in range(args.repeats):
                many.append(via_judge_many(client, items, concurrency, options))
                pool.append(via_thread_pool(client, items, concurrency, options))
            m, p = statistics.median(many), statistics.median(pool)
            print(f"| {concurrency:>9} | {m:>14.1f} | {p:>19.1f} | {m / p:>5.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
