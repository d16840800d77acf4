#!/usr/bin/env python3
"""rmr1 against llama.cpp on the CPU: same GGUF file, same thread count, one run, one table.

Run through scripts/cpu-vs-llamacpp.sh, which prepares target/peer-venv (a pinned llama-cpp-python
built for x86-64-v3 and the rmr1 Python client) and the test model. Measured on both sides:

- engine shapes: prefill of 512 synthetic tokens; greedy decode of 128 tokens after 64-token prompts
  for 1, 4 and 16 sequences at once (aggregate tok/s, prompts' prefill excluded). rmr1 reports its
  side with `rmr1 bench engine --json`; the llama.cpp side feeds the very same token ids through the
  C API's batch interface.
- the judge workload: LLMBar pairs judged with greedy decoding and a short generation cap, the first
  `--pairs` pairs on a fresh server (cold) and the next `--pairs` on the same server (warm). rmr1
  serves them over gRPC, all pairs of a phase at once; llama.cpp gets the exact prompt token ids
  (`rmr1 debug judge-prompts`) one after another, reusing the KV cache of the common prefix between
  consecutive prompts as llama-cpp-python's `Llama.generate` does.

Ratios are throughput ratios rmr1 / llama.cpp (for times: llama.cpp seconds / rmr1 seconds). The run
exits 0 whether or not the goals are met; it fails on errors and when llama.cpp's greedy completion
of "The capital of France is" lacks "Paris" (a miscompiled build produces fluent garbage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Qwen2.5's end-of-text and end-of-turn tokens; the judge stops at either.
EOS_IDS = frozenset({151643, 151645})
PREFILL_TOKENS = 512
DECODE_PROMPT_TOKENS = 64
DECODE_NEW_TOKENS = 128
CONCURRENCY = (1, 4, 16)
# Throughput ratio (rmr1 / llama.cpp) each row should reach; rows without a goal are informative.
GOALS = {
    "prefill": 1.2,
    "decode_1": 1.0,
    "decode_16": 1.5,
    "judge_cold": 2.0,
    "judge_warm": 2.0,
}


def parse_args() -> argparse.Namespace:
    """Command line; defaults reproduce the comparison the goals were set for."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="directory holding model.gguf and tokenizer.json")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--pairs", type=int, default=16, help="LLMBar pairs per judge phase (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation cap per judgment (default 64)")
    p.add_argument("--family", default="instruct", help="RM-R1 prompt family of the model (default instruct)")
    p.add_argument("--data", help="LLMBar dataset.json (default $RMR1_SHARED_DATA/llmbar/.../Natural/dataset.json)")
    p.add_argument("--skip-engine", action="store_true", help="skip the engine shapes")
    p.add_argument("--skip-judge", action="store_true", help="skip the judge workload")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


# -- the machine and the builds ---------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name, so a table pasted elsewhere says what it was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rmr1_commit() -> str:
    """The commit the rmr1 binary is assumed to be built from (the working tree's), marked dirty when
    tracked files differ from it, since then the binary may not match any commit."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (/proc/stat), to tell afterwards how much
    of it went to other processes: a build running alongside skews the ratio, llama.cpp's OpenMP
    threads suffering more from it than rmr1's."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process (llama.cpp runs in it) and of its waited-for children (rmr1)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def synthetic_prompt(n: int, salt: int, vocab: int) -> list[int]:
    """rmr1 bench engine's filler prompt (src/bench/engine.rs), u32 arithmetic included, so both
    engines prefill and decode from identical token ids."""
    span = min(vocab, 100_000) - 1000
    return [1000 + ((i * 2_654_435_761 + salt * 7919) & 0xFFFFFFFF) % span for i in range(n)]


# -- llama.cpp --------------------------------------------------------------------------------------


class PeerContext:
    """A llama.cpp context made through the C API, for what `Llama` does not expose: several
    sequences decoded in one batch (n_seq_max > 1). Shares the `Llama` object's weights; flash
    attention on like the judge's Llama, so both halves of the comparison run the same kernels."""

    def __init__(self, model, n_vocab: int, threads: int, n_ctx: int, n_batch: int, n_seq_max: int):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx {n_ctx}, n_seq_max {n_seq_max})")
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_vocab = n_vocab

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        b = self.batch
        b.n_tokens = len(entries)
        for j, (token, pos, seq, logits) in enumerate(entries):
            b.token[j] = token
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = logits
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(self, j: int) -> int:
        """Greedy choice from the logits of batch entry j (same rule as rmr1's greedy sampler)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, j)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def load_llama(model_dir: Path, threads: int, n_ctx: int) -> llama_cpp.Llama:
    """The llama.cpp model: one Llama, prompt batches of 512, logits of the last position only, f16 KV
    cache (as rmr1's default), and flash attention on, which is what llama.cpp's own default (auto)
    picks on the CPU; the Llama class would otherwise turn it off."""
    return llama_cpp.Llama(
        model_path=str(model_dir / "model.gguf"),
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        flash_attn=True,
        verbose=False,
    )


def paris_check(llm: llama_cpp.Llama) -> str:
    """Fails the run unless llama.cpp completes a fact correctly: a build for the wrong ISA or a
    miscompiled kernel still produces fluent text, and timing garbage proves nothing."""
    prompt = llm.tokenize(b"The capital of France is", add_bos=True, special=False)
    out = []
    for token in llm.generate(prompt, temp=0.0, reset=True):
        if token in EOS_IDS:
            break
        out.append(token)
        if len(out) >= 8:
            break
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    llm.reset()
    if "Paris" not in text:
        sys.exit(f"llama.cpp sanity check failed: 'The capital of France is' -> {text!r} (no 'Paris'); "
                 "the llama-cpp-python build is broken, rebuild it (rm -rf target/peer-venv)")
    return text


def llama_engine(llm: llama_cpp.Llama, threads: int) -> dict:
    """llama.cpp on rmr1 bench engine's shapes. Prefill: one llama_decode of 512 tokens on a fresh
    KV cache after a short warm-up, up to the first token's argmax. Decode: k sequences prefilled
    together (not timed), then one token per sequence per llama_decode; rate = tokens after each
    sequence's first / time after the first."""
    n_vocab = llm.n_vocab()
    model = llm.model

    ctx = PeerContext(model, n_vocab, threads, n_ctx=PREFILL_TOKENS + 64, n_batch=PREFILL_TOKENS, n_seq_max=1)
    try:
        warm = synthetic_prompt(32, 1, n_vocab)
        ctx.decode([(t, i, 0, i == len(warm) - 1) for i, t in enumerate(warm)])
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx.ctx), True)
        prompt = synthetic_prompt(PREFILL_TOKENS, 2, n_vocab)
        started = time.perf_counter()
        ctx.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        ctx.argmax(len(prompt) - 1)
        prefill_tok_s = PREFILL_TOKENS / (time.perf_counter() - started)
    finally:
        ctx.close()

    decode = []
    for k in CONCURRENCY:
        per_seq = DECODE_PROMPT_TOKENS + DECODE_NEW_TOKENS
        # Each sequence gets n_ctx / n_seq_max cells (non-unified KV cache, llama.cpp's default).
        ctx = PeerContext(model, n_vocab, threads, n_ctx=k * ((per_seq + 255) // 256) * 256,
                          n_batch=max(512, k * DECODE_PROMPT_TOKENS), n_seq_max=k)
        try:
            entries = []
            for s in range(k):
                prompt = synthetic_prompt(DECODE_PROMPT_TOKENS, 100 + s, n_vocab)
                entries += [(t, i, s, i == len(prompt) - 1) for i, t in enumerate(prompt)]
            ctx.decode(entries)
            nxt = [ctx.argmax((s + 1) * DECODE_PROMPT_TOKENS - 1) for s in range(k)]
            started = time.perf_counter()
            for step in range(DECODE_NEW_TOKENS - 1):
                ctx.decode([(nxt[s], DECODE_PROMPT_TOKENS + step, s, True) for s in range(k)])
                nxt = [ctx.argmax(s) for s in range(k)]
            seconds = time.perf_counter() - started
        finally:
            ctx.close()
        decode.append({"concurrency": k, "tok_s": k * (DECODE_NEW_TOKENS - 1) / seconds})
    return {"prefill_tokens": PREFILL_TOKENS, "prefill_tok_s": prefill_tok_s, "decode": decode}


def llama_judge(llm: llama_cpp.Llama, prompts: list[list[int]], max_new: int) -> dict:
    """Judges prompts one after another with Llama.generate, which keeps the KV cache of the longest
    common prefix with the previous prompt (the shared system prompt and instructions) and evaluates
    only the rest. Returns the wall time, each generation's text, and the prompt tokens llama.cpp
    actually evaluated (from its perf counters), which shows the prefix reuse took effect."""
    perf0 = llama_cpp.llama_perf_context(llm.ctx)
    texts = []
    started = time.perf_counter()
    for prompt in prompts:
        out = []
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in EOS_IDS:
                break
            out.append(token)
            if len(out) >= max_new:
                break
        texts.append(llm.detokenize(out).decode("utf-8", errors="replace"))
    seconds = time.perf_counter() - started
    perf1 = llama_cpp.llama_perf_context(llm.ctx)
    return {
        "seconds": seconds,
        "texts": texts,
        "prompt_tokens": sum(len(p) for p in prompts),
        "prompt_tokens_evaluated": perf1.n_p_eval - perf0.n_p_eval,
    }


# -- rmr1 -------------------------------------------------------------------------------------------


def rmr1_env(threads: int) -> dict:
    """rmr1's environment: candle sizes its thread pool from RAYON_NUM_THREADS."""
    return dict(os.environ, RAYON_NUM_THREADS=str(threads))


def rmr1_engine(rmr1: str, model_dir: Path, threads: int) -> dict:
    """rmr1 bench engine on the shapes above, its candle reference skipped (llama.cpp is the peer)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "engine.json"
        cmd = [rmr1, "bench", "engine", "--model", str(model_dir / "model.gguf"),
               "--prompt-tokens", str(PREFILL_TOKENS), "--decode-prompt-tokens", str(DECODE_PROMPT_TOKENS),
               "--new-tokens", str(DECODE_NEW_TOKENS), "--concurrency", ",".join(map(str, CONCURRENCY)),
               "--no-reference", "--json", str(out)]
        run = subprocess.run(cmd, env=rmr1_env(threads), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr}")
        return json.loads(out.read_text())


def judge_prompts(rmr1: str, model_dir: Path, family: str, data: Path, count: int) -> list[dict]:
    """The pairs with the exact token ids rmr1's judge feeds its engine, so llama.cpp is timed on
    identical prompts rather than on a re-rendering of the template."""
    cmd = [rmr1, "debug", "judge-prompts", "--model", str(model_dir / "model.gguf"), "--family", family,
           "--data", str(data), "--offset", "0", "--count", str(count)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr}")
    pairs = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    if len(pairs) < count:
        raise RuntimeError(f"{data} gave {len(pairs)} pairs, {count} needed")
    return pairs


def free_port() -> int:
    """A loopback port nobody listens on, so the benchmark's server does not collide with another."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rmr1_judge(rmr1: str, model_dir: Path, family: str, threads: int, phases: list[list[dict]],
               max_new: int) -> list[dict]:
    """Starts one rmr1 server and sends each phase's pairs all at once over one JudgeBatch stream;
    a phase's time runs from the first send to the last result. Model loading is not timed."""
    from rmr1_client import Client, RMR1Error

    port = free_port()
    cmd = [rmr1, "serve", "--model", str(model_dir / "model.gguf"), "--tokenizer", str(model_dir / "tokenizer.json"),
           "--family", family, "--device", "cpu", "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off"]
    # Extra server flags to compare settings (for example RMR1_SERVE_ARGS="--max-num-batched-tokens 1024").
    cmd += os.environ.get("RMR1_SERVE_ARGS", "").split()
    log = tempfile.NamedTemporaryFile(prefix="rmr1-serve-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, env=rmr1_env(threads), stdout=log, stderr=subprocess.STDOUT)
    results = []
    try:
        with Client(f"127.0.0.1:{port}", timeout=3600) as client:
            try:
                client.wait_until_serving(timeout=600)
            except RMR1Error as e:
                raise RuntimeError(f"rmr1 serve did not come up: {e.message} (log: {log.name})") from None
            for pairs in phases:
                items = [{"question": p["instruction"], "response_a": p["response_a"],
                          "response_b": p["response_b"]} for p in pairs]
                started = time.perf_counter()
                got = client.judge_many(items, concurrency=len(items), max_new_tokens=max_new,
                                        temperature=0.0, include_reasoning=True)
                seconds = time.perf_counter() - started
                failed = [(p["id"], r.message) for p, r in zip(pairs, got) if isinstance(r, RMR1Error)]
                if failed:
                    raise RuntimeError(f"rmr1 refused or failed {len(failed)} judgments, first: {failed[0]}")
                results.append({
                    "seconds": seconds,
                    "texts": [r.raw_output for r in got],
                    "prompt_tokens": [r.usage.prompt_tokens for r in got],
                    "cached_tokens": sum(r.usage.cached_tokens for r in got),
                })
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    os.unlink(log.name)
    return results


# -- the report -------------------------------------------------------------------------------------


def goal_cell(key: str, ratio: float | None) -> str:
    """The goal column: the target ratio and whether this run met it."""
    goal = GOALS.get(key)
    if goal is None or ratio is None:
        return "-"
    return f"≥{goal:.1f}x {'met' if ratio >= goal else 'not met'}"


def build_rows(ours: dict, peer: dict, pairs: int) -> list[dict]:
    """Table rows (measurement, both sides, throughput ratio, goal) from whichever phases ran."""
    rows = []
    if "engine" in ours:
        e, l = ours["engine"], peer["engine"]
        rows.append({"key": "prefill", "name": f"prefill {PREFILL_TOKENS} tokens (tok/s)",
                     "rmr1": e["prefill_tok_s"], "llama_cpp": l["prefill_tok_s"]})
        ours_decode = {d["concurrency"]: d["tok_s"] for d in e["decode"]}
        for d in l["decode"]:
            k = d["concurrency"]
            name = "decode, 1 sequence (tok/s)" if k == 1 else f"decode, {k} sequences aggregate (tok/s)"
            rows.append({"key": f"decode_{k}", "name": name, "rmr1": ours_decode.get(k), "llama_cpp": d["tok_s"]})
    for phase in ("cold", "warm"):
        if phase in ours:
            rows.append({"key": f"judge_{phase}", "name": f"judge {phase}, {pairs} pairs (s)", "unit": "s",
                         "rmr1": ours[phase]["seconds"], "llama_cpp": peer[phase]["seconds"], "pairs": pairs})
    for r in rows:
        r.setdefault("unit", "tok/s")
        a, b = r["rmr1"], r["llama_cpp"]
        r["ratio"] = None if a is None or b is None else (b / a if r["unit"] == "s" else a / b)
    return rows


def print_table(rows: list[dict]) -> None:
    """One markdown table; judge rows show seconds and judgments per second."""
    def cell(r: dict, side: str) -> str:
        v = r[side]
        if v is None:
            return "-"
        return f"{v:.1f} s ({r['pairs'] / v:.2f} j/s)" if r["unit"] == "s" else f"{v:.1f}"

    print("| measurement | rmr1 | llama.cpp | ratio rmr1/llama.cpp | goal |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"| {r['name']} | {cell(r, 'rmr1')} | {cell(r, 'llama_cpp')} | {ratio} | {goal_cell(r['key'], r['ratio'])} |")


def main() -> int:
    args = parse_args()
    model_dir = Path(args.model_dir).resolve()
    rmr1 = os.environ.get("RMR1_BIN", str(REPO / "target/release/rmr1"))
    if not os.access(rmr1, os.X_OK):
        sys.exit(f"rmr1 binary not found at {rmr1} (cargo build --release, or set RMR1_BIN)")
    shared = Path(os.environ.get("RMR1_SHARED_DATA", REPO.parent / "shared/data"))
    data = Path(args.data) if args.data else shared / "llmbar/Dataset/LLMBar/Natural/dataset.json"

    busy0, own0, wall0 = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
    pairs = []
    if not args.skip_judge:
        pairs = judge_prompts(rmr1, model_dir, args.family, data, 2 * args.pairs)
    longest = max((len(p["prompt_tokens"]) for p in pairs), default=0)
    llm = load_llama(model_dir, args.threads, n_ctx=max(4096, longest + args.max_new_tokens + 64))

    info = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "rmr1_commit": rmr1_commit(),
        "rmr1_bin": rmr1,
        "model": str(model_dir / "model.gguf"),
    }
    print(f"CPU: {info['cpu']}, {args.threads} threads for each engine")
    print(f"llama-cpp-python {info['llama_cpp_python']}: {info['llama_cpp_system_info']}")
    print(f"rmr1 commit {info['rmr1_commit']} ({rmr1})")
    print(f"model: {info['model']}")
    completion = paris_check(llm)
    print(f"llama.cpp sanity: 'The capital of France is' ->{completion!r}")
    sys.stdout.flush()

    ours, peer = {}, {}
    if not args.skip_engine:
        print("engine shapes: rmr1 ...", flush=True)
        ours["engine"] = rmr1_engine(rmr1, model_dir, args.threads)
        print("engine shapes: llama.cpp ...", flush=True)
        peer["engine"] = llama_engine(llm, args.threads)

    identical = {}
    if not args.skip_judge:
        n = args.pairs
        phases = {"cold": pairs[:n], "warm": pairs[n:2 * n]}
        print(f"judge: rmr1, {n} cold + {n} warm pairs, {args.max_new_tokens} new tokens ...", flush=True)
        for phase, result in zip(phases, rmr1_judge(rmr1, model_dir, args.family, args.threads,
                                                     list(phases.values()), args.max_new_tokens)):
            ours[phase] = result
        for phase, ps in phases.items():
            print(f"judge: llama.cpp, {phase} ...", flush=True)
            peer[phase] = llama_judge(llm, [p["prompt_tokens"] for p in ps], args.max_new_tokens)
            mismatched = [p["id"] for p, served in zip(ps, ours[phase]["prompt_tokens"])
                          if served != len(p["prompt_tokens"])]
            if mismatched:
                print(f"warning: rmr1 serve's prompt length differs from judge-prompts' for {mismatched}")
            identical[phase] = sum(a.strip() == b.strip() for a, b in zip(ours[phase]["texts"], peer[phase]["texts"]))
            print(f"  prompt tokens {peer[phase]['prompt_tokens']}: rmr1 served {ours[phase]['cached_tokens']} "
                  f"from its prefix cache, llama.cpp evaluated {peer[phase]['prompt_tokens_evaluated']}")

    wall = time.monotonic() - wall0
    others = max(0.0, (busy_cpu_seconds() - busy0) - (own_cpu_seconds() - own0))
    info["other_processes_cpu_share"] = others / wall
    if others > 0.05 * wall:
        print(f"warning: other processes kept {others / wall:.0%} of a core busy during the run; the "
              "figures are skewed, rerun on an otherwise idle machine")

    rows = build_rows(ours, peer, args.pairs)
    print()
    print_table(rows)
    if identical:
        print()
        print(f"greedy outputs identical: {identical['cold']}/{args.pairs} cold, {identical['warm']}/{args.pairs} warm")
    if args.json:
        report = {
            "info": info,
            "rows": [r | {"goal": GOALS.get(r["key"])} for r in rows],
            "identical": identical,
            "rmr1": ours,
            "llama_cpp": peer,
        }
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
