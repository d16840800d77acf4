"""Checks rmr1's PEFT adapter reader and writer and its merged export against transformers + peft.

Run by scripts/verify-peft.sh. Everything is f32 on the CPU; every comparison must be within 1e-4.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

TOL = 1e-4
VOCAB = 128
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_base(path: Path) -> None:
    """A random Qwen2 with large enough weights that the logits are far from zero."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        eos_token_id=1,
    )
    model = Qwen2ForCausalLM(config).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    vocab = {"<unk>": 0, "</s>": 1, **{f"w{k}": k for k in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
    fast.save_pretrained(path)


def tiny_adapter(base: Path, path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=MODULES, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:  # lora_B starts at zero: make it matter
                p.copy_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(path)


def rmr1(bin_: str, *args: str) -> None:
    print("+ rmr1", " ".join(args), flush=True)
    subprocess.run([bin_, *args], check=True)


def rmr1_logits(bin_: str, out: Path, model: Path, tokens: list, adapter: Path = None) -> torch.Tensor:
    args = ["debug", "logits", "--model", str(model), "--tokens", ",".join(map(str, tokens)), "--out", str(out)]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    rmr1(bin_, *args)
    return torch.tensor(json.loads(out.read_text())["logits"], dtype=torch.float32)


@torch.no_grad()
def hf_logits(model, tokens: list) -> torch.Tensor:
    model.eval()
    return model(torch.tensor([tokens])).logits[0].float()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    base, adapter = work / "base", work / "adapter"
    merged, resaved = work / "merged", work / "resaved-adapter"
    tiny_base(base)
    tiny_adapter(base, adapter)
    tokens = torch.randint(2, VOCAB, (24,), generator=torch.Generator().manual_seed(1)).tolist()

    rmr1(args.bin, "export", "--model", str(base), "--adapter", str(adapter), "--out", str(merged),
         "--dtype", "f32", "--overwrite")
    rmr1(args.bin, "debug", "resave-adapter", "--adapter", str(adapter), "--out", str(resaved))
    ours_adapter = rmr1_logits(args.bin, work / "ours_adapter.json", base, tokens, adapter)
    ours_merged = rmr1_logits(args.bin, work / "ours_merged.json", merged, tokens)

    peft = hf_logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter), tokens)
    peft_resaved = hf_logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), resaved), tokens)
    hf_merged = hf_logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), tokens)
    plain = hf_logits(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tokens)
    AutoTokenizer.from_pretrained(merged)  # the copied tokenizer files load too

    for f in list(merged.glob("*.safetensors")) + [resaved / "adapter_model.safetensors"]:
        with safe_open(f, "pt") as st:
            assert st.metadata() == {"format": "pt"}, f"{f}: metadata {st.metadata()}"

    checks = [
        ("rmr1 --adapter (PEFT's files) vs PeftModel", ours_adapter, peft),
        ("transformers on rmr1's merged export vs PeftModel", hf_merged, peft),
        ("rmr1 on its merged export vs transformers on it", ours_merged, hf_merged),
        ("rmr1 --adapter vs rmr1 merged export", ours_adapter, ours_merged),
        ("PeftModel on rmr1-written adapter vs PEFT's own", peft_resaved, peft),
    ]
    failed = False
    print(f"\n{'check':<55} max |Δlogit|")
    for name, a, b in checks:
        d = (a - b).abs().max().item()
        failed |= not d <= TOL
        print(f"{name:<55} {d:.3e} {'ok' if d <= TOL else 'FAIL'}")
    moved = (peft - plain).abs().max().item()
    print(f"{'(adapter effect: PeftModel vs base, must be large)':<55} {moved:.3e}")
    failed |= moved < 0.1
    print("verify-peft:", "FAILED" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
