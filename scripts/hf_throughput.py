#!/usr/bin/env python3
"""The reference for `rmr1 bench throughput`: the same workload shape through Hugging Face transformers
`generate` on the same GPU (random-weight Qwen2.5-7B config, bf16, sdpa, batch = concurrency, the
same prompt and generation lengths, EOS ignored). Prints one line per concurrency and, with --ours
(the JSON that `rmr1 bench throughput --json` wrote), the ratio ours / theirs.
"""
import argparse
import json
import os
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def config_7b():
    common = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)
    try:
        return Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
    except TypeError:
        return Qwen2Config(rope_theta=1e6, **common)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--prompt-tokens", type=int, default=1200)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--ours", help="JSON from rmr1 bench throughput --json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config_7b())
    model.config._attn_implementation = "sdpa"
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ours = {}
    if args.ours and os.path.exists(args.ours):  # absent when our bench failed or ran out of time
        with open(args.ours) as f:
            ours = {row["concurrency"]: row for row in json.load(f)}
    print(f"transformers generate on {torch.cuda.get_device_name()}: prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, bf16, sdpa, EOS ignored")
    print(f"{'batch':>5} {'HF tok/s':>10} {'ours tok/s':>11} {'ours/HF':>8} {'HF wall s':>10}")
    for c in [int(x) for x in args.concurrency.split(",")]:
        ids = torch.randint(0, 152064, (c, args.prompt_tokens), device="cuda")
        try:
            with torch.no_grad():
                model.generate(ids[:, :32], max_new_tokens=4, min_new_tokens=4, do_sample=False)
                torch.cuda.synchronize()
                started = time.time()
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                     min_new_tokens=args.new_tokens, do_sample=False)
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            # One prefill of the whole batch: the largest levels may not fit; keep the rows before.
            print(f"{c:>5} {'OOM':>10}", flush=True)
            torch.cuda.empty_cache()
            continue
        wall = time.time() - started
        generated = (out.shape[1] - args.prompt_tokens) * c
        rate = generated / wall
        mine = ours.get(c, {}).get("output_tokens_per_s")
        ratio = f"{mine / rate:>8.2f}" if mine else f"{'-':>8}"
        mine_s = f"{mine:>11.1f}" if mine else f"{'-':>11}"
        print(f"{c:>5} {rate:>10.1f} {mine_s} {ratio} {wall:>10.1f}", flush=True)
        del out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
