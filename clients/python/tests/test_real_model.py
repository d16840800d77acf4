"""Optional: the real small GGUF judge (RMR1_PY_REAL_MODEL=1; ~20 s a judgment on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rmr1_server import Rmr1Server

from rmr1_client import Client, Verdict

MODEL_DIR = Path(os.environ.get("RMR1_TEST_MODEL_DIR", Path.home() / ".cache" / "rmr1" / "test-model"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RMR1_PY_REAL_MODEL") != "1", reason="set RMR1_PY_REAL_MODEL=1"),
]


def test_real_model_prefers_the_right_answer():
    gguf, tokenizer = MODEL_DIR / "model.gguf", MODEL_DIR / "tokenizer.json"
    assert gguf.exists() and tokenizer.exists(), f"run scripts/fetch-test-model.sh ({MODEL_DIR})"
    with Rmr1Server(gguf, extra_args=("--tokenizer", str(tokenizer))) as server, Client(server.addr) as c:
        [info] = c.models()
        assert info.quantization.startswith("gguf") and info.context_length >= 32768
        j = c.judge("What is the capital of France?", "The capital of France is Paris.",
                    "The capital of France is Berlin.", max_new_tokens=32)
        assert j.usage.prompt_tokens > 500 and j.raw_output
        assert j.prob_a is not None and j.prob_a > 0.5
        assert j.verdict in (Verdict.A, Verdict.B, Verdict.INVALID)
