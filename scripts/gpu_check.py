#!/usr/bin/env python3
"""Model half of scripts/gpu-check.sh (runs on the GPU machine, where torch and transformers are).

Writes a random-weight Qwen2 with a served model's shape (`--shape`: 0.5B = 14 query / 2 kv heads at
head_dim 64 with tied embeddings, 7B = 28 / 4 at 128, 32B = 40 / 8 at 128, each with its real hidden and
MLP widths, 3 layers and the real 151,936-token vocabulary) as bf16 safetensors, runs it through
`rmr1 gpu-check model` and through Hugging Face transformers on the same GPU, and compares:
  - logits of the last positions of prompts of 1 to 10,240 tokens, all in one rmr1 forward step:
    rmr1 (bf16) and transformers (bf16) are both measured against transformers in f32 on the same
    bf16 weights, and rmr1 passes if its error is within 3x transformers' own bf16 error;
  - greedy tokens through the whole rmr1 engine (chunked prefill, batching, device sampler) against
    transformers' greedy tokens. Where they diverge, the allowance is set at that position: the f32
    logits of the two tokens may differ by at most what bf16 rounding can flip there, twice rmr1's
    per-logit allowance (3x transformers' bf16-vs-f32 error over that position's leading logits);
  - a second wave of prompts sharing a long prefix with the first, which must be served from the
    prefix cache and still match.
Helper modes for the shell script, each adding rows to the table file `--append-to` names:
`--append-rows` copies a row file (the kernel checks' JSON), or one failed row if the file is missing;
`--sanitizer-row` turns a compute-sanitizer run into a row; `--failed-row` records a phase that timed out
or crashed. `--print-table` prints the table (last) and sets the exit status.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

# torch, numpy and transformers are imported by `import_model_stack` when a model check runs, so the
# table helpers work on machines without them.
np = torch = Qwen2Config = Qwen2ForCausalLM = None


def import_model_stack():
    global np, torch, Qwen2Config, Qwen2ForCausalLM
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

VOCAB = 151_936
PROMPT_LENGTHS = [1, 7, 33, 130, 515, 1100, 10_240]
LOGIT_POSITIONS = 4
NEW_TOKENS = 16
SHARED_PREFIX = 400  # 25 whole blocks of 16: the prefix cache can serve all of it
# Qwen2.5 widths and head layouts (the RM-R1 checkpoints share them): hidden, MLP, q heads, kv heads, tied.
SHAPES = {
    "0.5b": (896, 4864, 14, 2, True),
    "7b": (3584, 18944, 28, 4, False),
    "14b": (5120, 13824, 40, 8, False),
    "32b": (5120, 27648, 40, 8, False),
}


def make_config(shape):
    hidden, mlp, heads, kv_heads, tied = SHAPES[shape]
    common = dict(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=3,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16_384,
        rms_norm_eps=1e-6, tie_word_embeddings=tied, use_sliding_window=False,
    )
    try:  # transformers 5 names RoPE settings rope_parameters
        return Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
    except TypeError:
        return Qwen2Config(rope_theta=1e6, **common)


def write_model(path, seed, shape):
    torch.manual_seed(seed)
    config = make_config(shape)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).float()
    with torch.no_grad():
        # Scales that keep activations O(1) and logits spread (std ~4), so greedy choices are
        # decided by real margins rather than by bf16 rounding.
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name and config.tie_word_embeddings:
                # Also the LM head: spread logits as the untied head below does.
                p.normal_(0.0, 4.0 / math.sqrt(p.shape[1]))
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            elif "lm_head" in name:
                p.normal_(0.0, 4.0 / math.sqrt(p.shape[1]))
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    model.to(torch.bfloat16).save_pretrained(path)  # safetensors by default
    del model
    with open(os.path.join(path, "config.json")) as f:
        saved = json.load(f)
    print("config.json rope:", {k: saved.get(k) for k in ("rope_theta", "rope_parameters", "head_dim")})


def load(path, dtype):
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.to("cuda").eval()


def logits_of(model, ids, keep):
    """f32 logits of the last `keep` positions of `ids`."""
    with torch.no_grad():
        return model(torch.tensor([ids], device="cuda"), logits_to_keep=keep).logits[0].float()


def next_logits(model, ids):
    return logits_of(model, ids, 1)[-1]


def greedy(model, ids, n):
    """Greedy tokens by full forwards (no cache: transparent, and cheap for 3 layers)."""
    out = []
    for _ in range(n):
        out.append(int(next_logits(model, ids + out).argmax()))
    return out


def row(check, max_error, tolerance, passed, detail):
    return {"check": check, "max_error": float(max_error), "tolerance": float(tolerance),
            "passed": bool(passed), "detail": detail}


def position_allowance(hf16, hf32, context, tokens):
    """How far apart two tokens' f32 logits may be at this position and still swap under bf16: twice
    rmr1's per-logit allowance, which is 3x transformers' own bf16 error over the position's ten
    leading logits and the tokens in question."""
    l32, l16 = next_logits(hf32, context), next_logits(hf16, context)
    idx = torch.cat([l32.topk(10).indices, torch.tensor(tokens, device=l32.device)])
    own_error = float((l16[idx] - l32[idx]).abs().max())
    return 2.0 * 3.0 * own_error + 1e-3, l32


def sanitizer_row(log_path, rc):
    if not log_path:
        return row("kernels under compute-sanitizer memcheck", float("nan"), 0, True,
                   "not run: no compute-sanitizer on this machine")
    with open(log_path, errors="replace") as f:
        log = f.read()
    if "Device not supported" in log or "error 999" in log.lower():
        return row("kernels under compute-sanitizer memcheck", float("nan"), 0, True,
                   "not run: the sanitizer cannot attach to this device (gVisor)")
    errors = log.count("========= Invalid") + log.count("========= Race")
    summary = [l for l in log.splitlines() if "ERROR SUMMARY" in l]
    passed = rc == 0 and errors == 0
    return row("kernels under compute-sanitizer memcheck", errors, 0, passed,
               (summary[-1].strip("= ") if summary else f"exit {rc}"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--work")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--append-to", help="add this run's rows to a table file instead of printing")
    ap.add_argument("--print-table", help="print a table file; exit 1 if any row failed")
    ap.add_argument("--append-rows", nargs=3, metavar=("ROWS_JSON", "CHECK", "DETAIL"),
                    help="add a file's rows; if it is missing, one failed row CHECK with DETAIL")
    ap.add_argument("--sanitizer-row", nargs=2, metavar=("LOG", "EXIT"))
    ap.add_argument("--failed-row", nargs=2, metavar=("CHECK", "DETAIL"))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    if args.print_table:
        if not os.path.exists(args.print_table):
            print(f"no results in {args.print_table}: every model check failed before reporting")
            return 1
        with open(args.print_table) as f:
            return print_rows(json.load(f))
    if args.append_rows or args.sanitizer_row or args.failed_row:
        if not args.append_to:
            ap.error("the row modes need --append-to")
        if args.append_rows:
            path, check, detail = args.append_rows
            if os.path.exists(path):
                with open(path) as f:
                    rows = json.load(f)
            else:
                rows = [row(check, float("nan"), 0, False, f"{detail}; no results file")]
        elif args.sanitizer_row:
            rows = [sanitizer_row(args.sanitizer_row[0], int(args.sanitizer_row[1]))]
        else:
            rows = [row(args.failed_row[0], float("nan"), 0, False, args.failed_row[1])]
        append_rows(args.append_to, rows)
        return 0
    if not args.bin or not args.work:
        ap.error("--bin and --work are required for a model check")
    import_model_stack()
    print(f"model check ({args.shape} shape), seed {args.seed}; torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}")
    rng = np.random.default_rng(args.seed)
    model_dir = os.path.join(args.work, "qwen2-random")
    os.makedirs(model_dir, exist_ok=True)
    write_model(model_dir, args.seed, args.shape)

    prompts = [rng.integers(0, VOCAB, n).tolist() for n in PROMPT_LENGTHS]
    second = [prompts[4][:SHARED_PREFIX] + rng.integers(0, VOCAB, 37).tolist(), list(prompts[3])]
    check_input = {"prompts": prompts, "logit_positions": LOGIT_POSITIONS, "new_tokens": NEW_TOKENS,
                   "second_wave": second}
    input_path = os.path.join(args.work, "model_input.json")
    with open(input_path, "w") as f:
        json.dump(check_input, f)

    results = []
    started = time.time()
    ours_run = subprocess.run([args.bin, "gpu-check", "model", "--model", model_dir, "--input", input_path,
                               "--out", args.work], capture_output=True, text=True)
    print(ours_run.stdout + ours_run.stderr[-4000:])
    print(f"rmr1 model run: exit {ours_run.returncode} in {time.time() - started:.1f} s")
    if ours_run.returncode != 0:
        results.append(row(f"model {args.shape}: rmr1 gpu-check model ran", float("nan"), 0, False,
                           ours_run.stderr.strip().splitlines()[-1] if ours_run.stderr.strip() else "failed"))
        return finish(args, results)
    with open(os.path.join(args.work, "ours.json")) as f:
        ours = json.load(f)
    ours_logits = np.load(os.path.join(args.work, "ours_logits.npy"))

    hf16, hf32 = load(model_dir, torch.bfloat16), load(model_dir, torch.float32)
    # Logits of the chosen positions.
    keep = {i: min(LOGIT_POSITIONS, len(p)) for i, p in enumerate(prompts)}
    ref32 = {i: logits_of(hf32, p, keep[i]).cpu().numpy() for i, p in enumerate(prompts)}
    ref16 = {i: logits_of(hf16, p, keep[i]).cpu().numpy() for i, p in enumerate(prompts)}
    err_ours = err_hf = 0.0
    argmax_agree = 0
    for r, (i, pos) in enumerate(ours["logit_rows"]):
        k = pos - (len(prompts[i]) - keep[i])  # row within the kept positions
        want = ref32[i][k]
        err_ours = max(err_ours, float(np.abs(ours_logits[r] - want).max()))
        err_hf = max(err_hf, float(np.abs(ref16[i][k] - want).max()))
        argmax_agree += int(ours_logits[r].argmax() == want.argmax())
    n_rows = len(ours["logit_rows"])
    bound = 3.0 * err_hf + 1e-3
    results.append(row(f"model {args.shape}: logits vs transformers f32", err_ours, bound, err_ours <= bound,
                       f"{n_rows} positions of prompts {PROMPT_LENGTHS} in one step; transformers bf16 "
                       f"error {err_hf:.3e}; argmax agrees on {argmax_agree}/{n_rows}"))

    # Greedy tokens through the engine.
    waves = {1: prompts, 2: second}
    compared = mismatched = 0
    notes = []
    lp_err = 0.0
    for g in ours["generations"]:
        prompt = waves[g["wave"]][g["index"]]
        want = greedy(hf16, prompt, NEW_TOKENS)
        got = g["tokens"]
        for j, (a, b) in enumerate(zip(got, want)):
            # Log-probability the engine reported for its token, against transformers f32.
            row32 = torch.log_softmax(next_logits(hf32, prompt + got[:j]), -1)
            reported = g["logprobs"][j]  # null when the engine produced NaN
            lp_err = max(lp_err, math.inf if reported is None else abs(float(row32[a]) - reported))
            if a == b:
                compared += 1
                continue
            allowance, l32 = position_allowance(hf16, hf32, prompt + got[:j], [a, b])
            margin = abs(float(l32[a]) - float(l32[b]))
            if margin <= allowance:
                notes.append(f"wave {g['wave']} #{g['index']}: near tie at step {j} "
                             f"(f32 margin {margin:.3f} <= {allowance:.3f})")
            else:
                mismatched += 1
                notes.append(f"wave {g['wave']} #{g['index']}: step {j} ours {a} hf {b} "
                             f"(f32 margin {margin:.3f} > {allowance:.3f})")
            break
    results.append(row(f"model {args.shape}: greedy tokens vs transformers bf16", mismatched, 0, mismatched == 0,
                       f"{compared} tokens equal over {len(ours['generations'])} generations; "
                       + ("; ".join(notes) or "no divergence")))
    lp_tol = max(0.1, 2.0 * err_ours)
    results.append(row(f"model {args.shape}: engine logprobs vs transformers f32", lp_err, lp_tol, lp_err <= lp_tol,
                       "log p of each generated token (tolerance: twice the logits error, at least 0.1)"))
    cached = [g["cached_tokens"] for g in ours["generations"] if g["wave"] == 2]
    results.append(row(f"model {args.shape}: prefix-cache hit in second wave", 0 if cached and cached[0] >= SHARED_PREFIX - 16 else 1,
                       0, bool(cached) and cached[0] >= SHARED_PREFIX - 16,
                       f"cached tokens {cached} (shared prefix {SHARED_PREFIX}, identical prompt "
                       f"{PROMPT_LENGTHS[3]}); engine prefix hits {ours['prefix_hit_tokens']}"))
    return finish(args, results)


def finish(args, results):
    if args.append_to:
        append_rows(args.append_to, results)
        return 1 if any(not r["passed"] for r in results) else 0
    return print_rows(results)


def append_rows(table_path, rows):
    """Adds rows to a table file, rewritten whole each time so a later kill leaves it valid."""
    earlier = []
    if os.path.exists(table_path):
        with open(table_path) as f:
            earlier = json.load(f)
    for r in rows:  # serde writes NaN / infinity as null
        r["max_error"] = float("nan") if r["max_error"] is None else float(r["max_error"])
    tmp = table_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(earlier + rows, f, indent=1)
    os.replace(tmp, table_path)


def print_rows(table):
    """Prints the rows as a table (their file is the shell script's table.json); 1 if any failed."""
    for r in table:
        r["max_error"] = float("nan") if r["max_error"] is None else float(r["max_error"])
    print()
    print(f"{'check':<52} {'max error':>11} {'tolerance':>10}  result  detail")
    for r in table:
        print(f"{r['check']:<52} {r['max_error']:>11.3e} {r['tolerance']:>10.1e}  "
              f"{'pass' if r['passed'] else 'FAIL':<6}  {r.get('detail', '')[:160]}")
    failed = sum(not r["passed"] for r in table)
    print(f"{len(table) - failed}/{len(table)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
