"""A tiny random Qwen2 model on disk, written as the Rust tests' ``write_tiny_model`` writes it.

Same config fields, tensor names and shapes, the same SplitMix64 + Irwin-Hall generator drawn in
the same order (so a spec should give the Rust tests' weights; not cross-checked bit for bit, as
that needs cargo), the same word-level tokenizer with the verdict words "A"/"B" and the
"[[A]]"/"[[B]]" tokens, and the same chat template. Only numpy is needed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class TinySpec:
    """Mirror of ``tests/common/mod.rs`` ``TinySpec`` (defaults included)."""

    vocab: int = 96
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 1024
    tie_embeddings: bool = False
    head_scale: float = 0.5
    seed: int = 1
    verdict_words: bool = False
    verdict_token_gain: float = 0.0
    suppress_eos: bool = False


#: The Rust eval tests' judge (``eval_judge_spec``): greedy outputs of some prompts contain
#: "[[A]]" / "[[B]]".
EVAL_JUDGE_SPEC = TinySpec(vocab=128, max_positions=2048, verdict_words=True, verdict_token_gain=2.5)
#: The same with seed 2, whose verdicts vary more with the pair (A, B and INVALID, P(A) from
#: 0.03 to 0.6 over a few prompts; seed 1 prefers A almost always), so tests tell items apart.
JUDGE_SPEC = TinySpec(vocab=128, max_positions=2048, verdict_words=True, verdict_token_gain=2.5, seed=2)


class _SplitMix:
    """The Rust tests' SplitMix64 stream, vectorised: draw k uses state seed + (k + 1) * golden."""

    def __init__(self, seed: int) -> None:
        self.state = np.uint64(seed)

    def uniform(self, n: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            steps = np.arange(1, n + 1, dtype=np.uint64)
            z = self.state + steps * _GOLDEN
            self.state = z[-1] if n else self.state
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z ^= z >> np.uint64(31)
        return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)

    def normal(self, n: int, std: float) -> np.ndarray:
        u = self.uniform(4 * n).reshape(n, 4)
        s = np.zeros(n, dtype=np.float32)
        for j in range(4):  # Rust sums left to right from 0.0, in f32
            s = s + u[:, j]
        s = s - np.float32(2.0)
        return (s * np.float32(std)) * np.sqrt(np.float32(3.0))


def _random(rng: _SplitMix, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.normal(int(np.prod(shape)), std).reshape(shape)


def _norm_weight(rng: _SplitMix, n: int) -> np.ndarray:
    return np.float32(1.0) + rng.normal(n, 0.1)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format: u64 LE header length, a JSON header, then the raw f32 bytes."""
    header: dict[str, dict] = {}
    offset = 0
    blobs = []
    for name, t in tensors.items():
        data = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_tiny_model(directory: Path, spec: TinySpec = JUDGE_SPEC) -> Path:
    """Writes config.json, model.safetensors (f32), tokenizer.json and tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    h, i, d = spec.hidden, spec.intermediate, spec.hidden // spec.heads
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": spec.vocab,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.max_positions,
        "max_window_layers": spec.layers,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "eos_token_id": 1,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    rng = _SplitMix(spec.seed)
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": _random(rng, (spec.vocab, h), 1.0)}
    s = float(np.float32(1.0) / np.sqrt(np.float32(h)))
    for layer in range(spec.layers):
        p = f"model.layers.{layer}"
        t[f"{p}.input_layernorm.weight"] = _norm_weight(rng, h)
        t[f"{p}.post_attention_layernorm.weight"] = _norm_weight(rng, h)
        t[f"{p}.self_attn.q_proj.weight"] = _random(rng, (spec.heads * d, h), 2.0 * s)
        t[f"{p}.self_attn.q_proj.bias"] = _random(rng, (spec.heads * d,), 0.2)
        t[f"{p}.self_attn.k_proj.weight"] = _random(rng, (spec.kv_heads * d, h), 2.0 * s)
        t[f"{p}.self_attn.k_proj.bias"] = _random(rng, (spec.kv_heads * d,), 0.2)
        t[f"{p}.self_attn.v_proj.weight"] = _random(rng, (spec.kv_heads * d, h), s)
        t[f"{p}.self_attn.v_proj.bias"] = _random(rng, (spec.kv_heads * d,), 0.2)
        t[f"{p}.self_attn.o_proj.weight"] = _random(rng, (h, spec.heads * d), s)
        t[f"{p}.mlp.gate_proj.weight"] = _random(rng, (i, h), s)
        t[f"{p}.mlp.up_proj.weight"] = _random(rng, (i, h), s)
        t[f"{p}.mlp.down_proj.weight"] = _random(rng, (h, i), float(np.float32(1.0) / np.sqrt(np.float32(i))))
    t["model.norm.weight"] = _norm_weight(rng, h)
    if not spec.tie_embeddings:
        head = _random(rng, (spec.vocab, h), spec.head_scale)
        if spec.verdict_token_gain > 0.0:
            head[spec.vocab - 4] *= np.float32(spec.verdict_token_gain)
            head[spec.vocab - 3] *= np.float32(spec.verdict_token_gain)
        if spec.suppress_eos:
            head[1] = 0.0
        t["lm_head.weight"] = head
    write_safetensors(directory / "model.safetensors", t)

    # Word-level tokenizer: token k is the word "w{k}"; ids 0 and 1 are <unk> and the EOS "</s>".
    vocab = {"<unk>": 0, "</s>": 1}
    for k in range(2, spec.vocab):
        word = f"w{k}"
        if spec.verdict_token_gain > 0.0 and k == spec.vocab - 4:
            word = "[[A]]"
        elif spec.verdict_token_gain > 0.0 and k == spec.vocab - 3:
            word = "[[B]]"
        elif spec.verdict_words and k == spec.vocab - 2:
            word = "A"
        elif spec.verdict_words and k == spec.vocab - 1:
            word = "B"
        vocab[word] = k
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 1, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = {
        "eos_token": "</s>",
        "chat_template": "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory
