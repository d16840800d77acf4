#!/usr/bin/env python3
"""Load and fault suite: a real ``rmr1 serve`` over the tiny random model, driven through four phases.

    python clients/python/benchmarks/load_suite.py                      # default sizes
    python clients/python/benchmarks/load_suite.py --unary 40 --batch 40 --cancel 20 --deadline 20 --controls 4
    scripts/load-suite.sh --json load.json                              # venv + the release binary

The suite starts its own server on loopback (``$RMR1_BIN``, else ``target/release/rmr1``) with
``--metrics-listen`` on a free port, and sends raw grpc.aio calls (no client retries, so every
error the server returns is seen once). Phases, each on its own channel:

1. unary: ``--unary`` Judge calls, ``--concurrency`` in flight, each with a unique request_id.
2. batch: ``--batch`` judgments over ``--streams`` concurrent JudgeBatch streams, at most
   ``--window`` items in flight per stream (0: all at once).
3. cancel storm: ``--cancel`` Judge calls, ``--concurrency`` in flight, each cancelled by the
   client after a random 0 to ``--cancel-max-ms`` ms (one that finished first is simply OK).
4. deadline storm: ``--controls`` long Judge calls with a normal deadline start on ONE channel;
   then ``--deadline`` calls with deadlines of ``--deadline-min-ms`` to ``--deadline-max-ms`` ms
   are all sent at once on that channel. Their resets must not cost the connection: every
   control call has to succeed, and at least one must still be running when the storm is over.
   (grpc-core resets a stream only once its deadline passed, by when the server has mostly
   accepted it; so this catches a server that closes connections on resets at all, e.g.
   ``--server-arg=--http2-max-pending-resets=0``, but on an idle machine not necessarily a
   small budget such as hyper's default of 20: tests/server_hardening.rs checks that with
   resets sent on a raw HTTP/2 connection.)

Per phase: sent, ok, lost (no answer, or a batch item missing when its stream ended),
duplicated (request_ids answered more than once), errors by gRPC code, p50 / p99 latency of
successful calls, wall seconds, judgments/s and the server's VmRSS after it. Also its VmRSS
before phase 1 and, after the last phase (once settled, up to ``--settle-s``), its VmRSS and the
gauges rmr1_num_requests_running, rmr1_num_requests_waiting and rmr1_kv_cache_usage_perc, which
must be back at 0. Sizes of 2,000 / 2,000 / 500 / 500 take about 20 s on 2 cores.

Exit status 1 when anything was lost or duplicated, an unexpected code appeared (phases 1-2:
only OK; 3: also CANCELLED; 4: also DEADLINE_EXCEEDED and CANCELLED for storm calls, only OK
for controls), no control call was still running when the storm ended, the server died, or a
gauge is not back at 0; else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rmr1_server import Rmr1Server, free_port  # noqa: E402
from tiny_model import JUDGE_SPEC, write_tiny_model  # noqa: E402

from rmr1_client import _requests  # noqa: E402
from rmr1_client._core import CHANNEL_OPTIONS, batch_deadline  # noqa: E402
from rmr1_client._proto.rmr1.v1 import judge_pb2, judge_pb2_grpc  # noqa: E402
from rmr1_client.errors import status_code_from_int  # noqa: E402

#: The gauges that must read 0 once the server is idle again.
GAUGES = ("rmr1_num_requests_running", "rmr1_num_requests_waiting", "rmr1_kv_cache_usage_perc")
#: Pseudo-code of an answer whose request_id was never sent (always unexpected).
UNSENT_ID = "UNSENT_REQUEST_ID"
OK = grpc.StatusCode.OK.name
#: The row of the deadline phase's long calls.
CONTROLS = "deadline controls"


# --- Bookkeeping -------------------------------------------------------------------------------


@dataclass
class PhaseReport:
    """One row of the table (and of the JSON report)."""

    name: str
    sent: int
    ok: int
    lost: int
    duplicated: int
    errors: dict[str, int]
    unexpected: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    wall_s: float
    judgments_per_s: float
    #: The server's VmRSS right after the phase.
    rss_after_kib: int | None = None
    #: The first message seen per error code (diagnostics; not in the table).
    examples: dict[str, str] = field(default_factory=dict)


class Tally:
    """The answers of one phase, matched by request_id against what was sent.

    Codes in ``expected`` (besides OK) are no failure. A failed JudgeBatch stream counts once in
    the errors, as ``stream:<CODE>``; its unanswered items count as lost.
    """

    def __init__(self, name: str, expected: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.expected = expected | {OK}
        self.sent_at: dict[str, float] = {}
        self.answers: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.latencies: list[float] = []
        self.ok = 0
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.rss_kib: int | None = None

    def send(self, request_id: str) -> None:
        self.sent_at[request_id] = time.perf_counter()

    def answer(self, request_id: str, code: str, message: str = "") -> None:
        """One answer for ``request_id``: ``code`` is a ``grpc.StatusCode`` name."""
        now = time.perf_counter()
        if request_id not in self.sent_at:
            self._error(UNSENT_ID, f"{code} for request_id {request_id!r}")
            return
        self.answers[request_id] += 1
        if self.answers[request_id] > 1:
            return  # counted in ``duplicated``
        if code == OK:
            self.ok += 1
            self.latencies.append(now - self.sent_at[request_id])
        else:
            self._error(code, message)

    def stream_failed(self, code: str, message: str) -> None:
        self._error(f"stream:{code}", message)

    def _error(self, code: str, message: str) -> None:
        self.errors[code] += 1
        self.examples.setdefault(code, message)

    def start(self) -> None:
        self.started = time.perf_counter()

    def end(self) -> None:
        self.ended = time.perf_counter()

    def report(self) -> PhaseReport:
        wall = (self.ended or time.perf_counter()) - self.started
        lats = sorted(self.latencies)
        unexpected = {code: n for code, n in self.errors.items() if code not in self.expected}
        return PhaseReport(
            name=self.name,
            sent=len(self.sent_at),
            ok=self.ok,
            lost=sum(1 for rid in self.sent_at if not self.answers[rid]),
            duplicated=sum(1 for n in self.answers.values() if n > 1),
            errors=dict(sorted(self.errors.items())),
            unexpected=dict(sorted(unexpected.items())),
            p50_ms=_percentile(lats, 50) * 1e3 if lats else None,
            p99_ms=_percentile(lats, 99) * 1e3 if lats else None,
            wall_s=wall,
            judgments_per_s=self.ok / wall if wall > 0 else 0.0,
            rss_after_kib=self.rss_kib,
            examples=self.examples,
        )


def _percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- Requests and calls ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What each judgment asks for."""

    max_new_tokens: int
    both_orders: bool
    include_reasoning: bool

    def request(self, request_id: str, i: int, *, max_new_tokens: int | None = None) -> judge_pb2.JudgeRequest:
        """Item ``i``'s pair (words of the tiny model's vocabulary, varied so prompts differ)."""
        return _requests.judge_request(
            f"w{5 + i % 60} w{7 + (i * 7) % 60} w{9 + (i * 13) % 60}",
            f"w{20 + i % 50} w11",
            f"w{30 + (i * 3) % 50}",
            both_orders=self.both_orders,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            include_reasoning=self.include_reasoning,
            request_id=request_id,
        )


def _channel(addr: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)


async def _judge(
    stub: judge_pb2_grpc.JudgeServiceStub,
    tally: Tally,
    request: judge_pb2.JudgeRequest,
    timeout: float,
    cancel_after: float | None = None,
) -> None:
    """One Judge call, settled into ``tally``; ``cancel_after`` seconds: the client cancels it."""
    call = stub.Judge(request, timeout=timeout)
    tally.send(request.request_id)
    timer = asyncio.get_running_loop().call_later(cancel_after, call.cancel) if cancel_after is not None else None
    try:
        code = await call.code()  # waits for the status; never raises
    finally:
        if timer is not None:
            timer.cancel()
    if code == grpc.StatusCode.OK:
        response = await call
        tally.answer(response.request_id, OK)
    else:
        tally.answer(request.request_id, code.name, await call.details() or "")


async def _bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Runs ``one(i)`` for i < n with at most ``concurrency`` running."""
    slots = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with slots:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(n)))


# --- Phases ------------------------------------------------------------------------------------


async def unary_phase(addr: str, work: Workload, n: int, concurrency: int, timeout: float) -> list[Tally]:
    tally = Tally("unary")
    async with _channel(addr) as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        tally.start()
        await _bounded(n, concurrency, lambda i: _judge(stub, tally, work.request(f"u{i}", i), timeout))
        tally.end()
    return [tally]


async def _batch_stream(
    stub: judge_pb2_grpc.JudgeServiceStub,
    tally: Tally,
    requests: list[judge_pb2.JudgeRequest],
    window: int,
    timeout: float,
) -> None:
    slots = asyncio.Semaphore(window) if window > 0 else None

    async def outgoing() -> AsyncIterator[judge_pb2.JudgeRequest]:
        for request in requests:
            if slots is not None:
                await slots.acquire()
            tally.send(request.request_id)
            yield request

    call = stub.JudgeBatch(outgoing(), timeout=timeout)
    try:
        async for res in call:
            if res.HasField("response"):
                tally.answer(res.request_id, OK)
            else:
                code = status_code_from_int(res.error.code).name
                rejection = judge_pb2.BatchRejection.Name(res.error.rejection) if res.error.rejection else ""
                tally.answer(res.request_id, code, f"{res.error.message} {rejection}".strip())
            if slots is not None:
                slots.release()
    except grpc.RpcError as e:
        tally.stream_failed(e.code().name, e.details() or "")
    finally:
        call.cancel()


async def batch_phase(
    addr: str, work: Workload, n: int, streams: int, window: int, timeout: float
) -> list[Tally]:
    tally = Tally("batch")
    per_stream = [list(range(s, n, streams)) for s in range(streams)]
    async with _channel(addr) as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        tally.start()
        await asyncio.gather(*(
            _batch_stream(
                stub, tally, [work.request(f"b{i}", i) for i in items], window,
                batch_deadline(timeout, len(items), window or len(items)),
            )
            for items in per_stream if items
        ))
        tally.end()
    return [tally]


async def cancel_phase(
    addr: str, work: Workload, n: int, concurrency: int, max_ms: float, timeout: float, rng: random.Random
) -> list[Tally]:
    tally = Tally("cancel storm", frozenset({grpc.StatusCode.CANCELLED.name}))
    delays = [rng.uniform(0.0, max_ms) / 1e3 for _ in range(n)]
    async with _channel(addr) as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        tally.start()
        await _bounded(
            n, concurrency, lambda i: _judge(stub, tally, work.request(f"x{i}", i), timeout, cancel_after=delays[i])
        )
        tally.end()
    return [tally]


async def deadline_phase(
    addr: str,
    work: Workload,
    n: int,
    min_ms: float,
    max_ms: float,
    controls: int,
    control_tokens: int,
    timeout: float,
    rng: random.Random,
) -> tuple[list[Tally], int]:
    """The storm's and the controls' tallies, and how many controls were still running when the
    last storm call had its answer (0: the controls were too short to overlap the storm)."""
    storm = Tally(
        "deadline storm", frozenset({grpc.StatusCode.DEADLINE_EXCEEDED.name, grpc.StatusCode.CANCELLED.name})
    )
    control = Tally(CONTROLS)
    deadlines = [rng.uniform(min_ms, max_ms) / 1e3 for _ in range(n)]
    async with _channel(addr) as channel:  # one channel: one HTTP/2 connection for all of it
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        await channel.channel_ready()
        control.start()
        running = [
            asyncio.create_task(
                _judge(stub, control, work.request(f"c{i}", i, max_new_tokens=control_tokens), timeout)
            )
            for i in range(controls)
        ]
        await asyncio.sleep(0.05)  # the controls' streams are open before the storm
        storm.start()
        await asyncio.gather(*(_judge(stub, storm, work.request(f"d{i}", i), deadlines[i]) for i in range(n)))
        storm.end()
        overlapped = sum(1 for t in running if not t.done())
        await asyncio.gather(*running)
        control.end()
    return [storm, control], overlapped


# --- Server observation ------------------------------------------------------------------------


def vm_kib(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` size line (VmRSS, VmHWM) in KiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def scrape(url: str, names: tuple[str, ...] = GAUGES) -> dict[str, float | None]:
    """The named samples of a Prometheus text page, summed over label sets; None when absent."""
    with urllib.request.urlopen(url, timeout=5) as res:
        text = res.read().decode()
    values: dict[str, float | None] = {name: None for name in names}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if "{" in line:  # name{labels} value [timestamp]
            name, rest = line.split("{", 1)
            fields = rest.rsplit("}", 1)[1].split()
        else:  # name value [timestamp]
            name, *fields = line.split()
        if name in values and fields:
            values[name] = (values[name] or 0.0) + float(fields[0])
    return values


def settled_gauges(url: str, within: float) -> tuple[dict[str, float | None], float]:
    """Polls until every gauge reads 0 (or ``within`` seconds pass): the values and the wait."""
    started = time.monotonic()
    while True:
        try:
            values = scrape(url)
        except OSError:
            values = {name: None for name in GAUGES}
        waited = time.monotonic() - started
        if all(v == 0 for v in values.values()) or waited >= within:
            return values, waited
        time.sleep(0.2)


# --- The suite ---------------------------------------------------------------------------------


@dataclass
class SuiteReport:
    config: dict[str, Any]
    phases: list[PhaseReport]
    rss_before_kib: int | None
    rss_after_kib: int | None
    rss_peak_kib: int | None
    gauges: dict[str, float | None]
    gauges_waited_s: float
    #: Controls still running when the deadline storm was over (None: no deadline phase).
    controls_overlapping: int | None
    wall_s: float
    failures: list[str]
    #: The server's last log lines (its stderr at RUST_LOG=warn unless set).
    server_log: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def failures_of(
    phases: list[PhaseReport],
    gauges: dict[str, float | None],
    server_exit: int | None,
    controls_overlapping: int | None = None,
) -> list[str]:
    """Why the run failed (empty: it passed)."""
    found = []
    for p in phases:
        if p.lost:
            found.append(f"{p.name}: {p.lost} lost")
        if p.duplicated:
            found.append(f"{p.name}: {p.duplicated} duplicated")
        for code, n in p.unexpected.items():
            found.append(f"{p.name}: {n} x {code} ({p.examples.get(code, '')})")
    for name, value in gauges.items():
        if value != 0:
            found.append(f"{name} is {value} after the phases (want 0)")
    if server_exit is not None:
        found.append(f"the server exited with status {server_exit}")
    controls_failed = any(p.ok < p.sent for p in phases if p.name == CONTROLS)
    if controls_overlapping == 0 and not controls_failed:
        found.append("every control call ended before the deadline storm did, so the storm tested nothing: "
                     "raise --control-max-new-tokens")
    return found


async def run_phases(addr: str, pid: int, args: argparse.Namespace) -> tuple[list[Tally], int | None]:
    """The phases' tallies, in order, and the deadline phase's overlap (None when skipped).
    ``pid``: the server's, whose VmRSS is read after each phase."""
    work = Workload(args.max_new_tokens, args.both_orders, not args.no_reasoning)
    rng = random.Random(args.seed)
    tallies: list[Tally] = []
    overlap = None

    def done(phase: list[Tally]) -> None:
        rss = vm_kib(pid, "VmRSS")
        for tally in phase:
            tally.rss_kib = rss
        tallies.extend(phase)

    if args.unary:
        done(await unary_phase(addr, work, args.unary, args.concurrency, args.timeout))
    if args.batch:
        done(await batch_phase(addr, work, args.batch, args.streams, args.window, args.timeout))
    if args.cancel:
        done(await cancel_phase(addr, work, args.cancel, args.concurrency, args.cancel_max_ms, args.timeout, rng))
    if args.deadline or args.controls:
        storm, overlap = await deadline_phase(
            addr, work, args.deadline, args.deadline_min_ms, args.deadline_max_ms, args.controls,
            args.control_max_new_tokens, args.timeout, rng,
        )
        done(storm)
    return tallies, overlap


def run_suite(args: argparse.Namespace) -> SuiteReport:
    """Starts the server, runs the phases, observes the server; stops it again."""
    started = time.perf_counter()
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with ExitStack() as stack:
        model = write_tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory())), JUDGE_SPEC)
        server = stack.enter_context(
            Rmr1Server(model, metrics_listen=f"127.0.0.1:{metrics_port}", extra_args=tuple(args.server_arg))
        )
        assert server.proc is not None and server.addr is not None
        pid = server.proc.pid
        rss_before = vm_kib(pid, "VmRSS")
        tallies, overlap = asyncio.run(run_phases(server.addr, pid, args))
        if server.proc.poll() is None:
            gauges, waited = settled_gauges(url, args.settle_s)
        else:
            gauges, waited = {name: None for name in GAUGES}, 0.0
        rss_after, rss_peak = vm_kib(pid, "VmRSS"), vm_kib(pid, "VmHWM")
        server_exit = server.proc.poll()
    phases = [t.report() for t in tallies]
    return SuiteReport(
        config={k: v for k, v in vars(args).items() if k != "json"},
        phases=phases,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        rss_peak_kib=rss_peak,
        gauges=gauges,
        gauges_waited_s=waited,
        controls_overlapping=overlap,
        wall_s=time.perf_counter() - started,
        failures=failures_of(phases, gauges, server_exit, overlap if args.deadline and args.controls else None),
        server_log=list(server.log)[-20:],  # with what it logged while stopping
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def format_report(report: SuiteReport) -> str:
    header = ("phase", "sent", "ok", "lost", "dup", "p50 ms", "p99 ms", "wall s", "judg/s", "RSS MiB", "errors")
    rows = [
        (
            p.name, str(p.sent), str(p.ok), str(p.lost), str(p.duplicated), _ms(p.p50_ms), _ms(p.p99_ms),
            f"{p.wall_s:.2f}", f"{p.judgments_per_s:.1f}",
            "?" if p.rss_after_kib is None else f"{p.rss_after_kib / 1024:.1f}",
            " ".join(f"{code}={n}" for code, n in p.errors.items()) or "-",
        )
        for p in report.phases
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        return "| " + " | ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]
    out.append(
        f"server RSS (VmRSS): {_mib(report.rss_before_kib)} before phase 1, {_mib(report.rss_after_kib)} after "
        f"the last phase and its gauges settled (peak VmHWM {_mib(report.rss_peak_kib)}); RSS MiB: after each phase"
    )
    gauges = ", ".join(f"{name} {value if value is not None else 'absent'}" for name, value in report.gauges.items())
    out.append(f"gauges {report.gauges_waited_s:.1f} s after the last phase: {gauges}")
    if report.controls_overlapping is not None:
        out.append(f"deadline storm: {report.controls_overlapping}/{report.config['controls']} controls were still "
                   "running when the last storm call had its answer")
    out.append(f"total wall time {report.wall_s:.1f} s")
    if report.passed:
        out.append("PASS")
    else:
        out.append("FAIL:\n  " + "\n  ".join(report.failures))
        if report.server_log:
            out.append("server log (last lines):\n  " + "\n  ".join(report.server_log))
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_argument_group("phase sizes (0 skips a phase)")
    size.add_argument("--unary", type=int, default=2000, help="Judge calls in phase 1")
    size.add_argument("--batch", type=int, default=2000, help="judgments through JudgeBatch in phase 2")
    size.add_argument("--cancel", type=int, default=500, help="client-cancelled calls in phase 3")
    size.add_argument("--deadline", type=int, default=500, help="short-deadline calls in phase 4")
    size.add_argument("--controls", type=int, default=32, help="long calls beside the deadline storm")
    shape = parser.add_argument_group("load shape")
    shape.add_argument("--concurrency", type=int, default=64, help="calls in flight in phases 1 and 3")
    shape.add_argument("--streams", type=int, default=8, help="concurrent JudgeBatch streams in phase 2")
    shape.add_argument("--window", type=int, default=32, help="items in flight per stream (0: all at once)")
    shape.add_argument("--cancel-max-ms", type=float, default=50.0, help="cancel after 0 to this many ms")
    shape.add_argument("--deadline-min-ms", type=float, default=1.0)
    shape.add_argument("--deadline-max-ms", type=float, default=50.0)
    shape.add_argument("--seed", type=int, default=0, help="seeds the cancel delays and deadlines")
    judge = parser.add_argument_group("judgments")
    judge.add_argument("--max-new-tokens", type=int, default=16)
    judge.add_argument("--control-max-new-tokens", type=int, default=64, help="of the deadline phase's controls")
    judge.add_argument("--both-orders", action="store_true", help="judge both orders (client default: off)")
    judge.add_argument("--no-reasoning", action="store_true", help="include_reasoning=False (client default: on)")
    judge.add_argument("--timeout", type=float, default=120.0, help="deadline of normal calls, s")
    parser.add_argument("--settle-s", type=float, default=10.0, help="how long the gauges get to reach 0")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra `rmr1 serve` argument (repeatable), e.g. --server-arg=--max-num-seqs=32")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.streams < 1 or args.window < 0:
        parser.error("--concurrency and --streams must be at least 1, --window at least 0")
    if not 0 < args.deadline_min_ms <= args.deadline_max_ms:
        parser.error("need 0 < --deadline-min-ms <= --deadline-max-ms")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_suite(args)
    print(format_report(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
