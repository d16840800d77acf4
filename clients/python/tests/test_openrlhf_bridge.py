"""The OpenRLHF bridge: a real HTTP server process, posted to as OpenRLHF v0.11.0 posts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import TOKENS

from rmr1_client.openrlhf_bridge import parse_prompt, split_response


def chatml(messages, generation_prompt=True):
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


@pytest.fixture(scope="module")
def bridge(server):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmr1_client.openrlhf_bridge", "--rmr1", server.addr, "--port", "0",
         "--max-new-tokens", str(TOKENS)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"bridge on (http://\S+)/get_reward", line)
            if m:
                url = m.group(1)
                break
        assert url, "the bridge did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def post(url, body):
    """What SingleTurnAgentExecutor._fetch_rewards_via_http sends; returns (status, JSON)."""
    req = urllib.request.Request(url + "/get_reward", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_parse_prompt_and_split_response():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "w5 w6"}]
    assert parse_prompt(chatml(msgs)) == [{"role": "user", "content": "be brief\n\nw5 w6"}]
    assert parse_prompt(chatml(msgs), system="drop") == [{"role": "user", "content": "w5 w6"}]
    llama = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nw5 w6<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert parse_prompt(llama) == [{"role": "user", "content": "w5 w6"}]
    assert parse_prompt("Question: w5 w6\nAnswer:") == [{"role": "user", "content": "Question: w5 w6\nAnswer:"}]
    p = chatml(msgs)
    assert split_response(p + "w40 w41<|im_end|>", p) == "w40 w41"
    assert split_response("<s>" + p + "w40</s><|endoftext|>", p) == "w40"
    assert split_response(p + "<|im_end|>", p) == ""  # an empty reply is still a reply


def test_labelled_samples_get_p_beats_label(bridge, client):
    msgs = [{"role": "user", "content": "w5 w6 w7"}]
    prompt = chatml(msgs)
    for response in ("w40 w41", "w42", ""):
        status, body = post(bridge, {"query": [prompt + response + "<|im_end|>"], "prompts": [prompt],
                                     "labels": ["w9 w10"]})
        assert status == 200 and set(body) == {"rewards", "scores", "extra_logs"}
        j = client.judge(conversation=msgs, response_a=response, response_b="w9 w10", max_new_tokens=TOKENS,
                         both_orders=True)
        assert body["rewards"] == pytest.approx([j.preference_a()], abs=1e-5)
        assert body["scores"] == body["rewards"]
        assert body["extra_logs"]["rmr1_invalid"] == [1.0 if j.verdict.value == "INVALID" else 0.0]


def test_unlabelled_batch_is_ranked_per_prompt(bridge, client):
    p1, p2 = chatml([{"role": "user", "content": "w5 w6"}]), chatml([{"role": "user", "content": "w30"}])
    items = [(p1, "w40"), (p2, "w50"), (p1, "w41 w42"), (p2, "w51"), (p1, "")]
    status, body = post(bridge, {"query": [p + r + "<|im_end|>" for p, r in items], "prompts": [p for p, _ in items],
                                 "labels": [""] * len(items)})
    assert status == 200 and len(body["rewards"]) == len(items)
    r1 = client.rank("w5 w6", ["w40", "w41 w42", ""], max_new_tokens=TOKENS).win_rates
    r2 = client.rank("w30", ["w50", "w51"], max_new_tokens=TOKENS).win_rates
    expected = [r1[0], r2[0], r1[1], r2[1], r1[2]]
    assert body["rewards"] == pytest.approx(expected, abs=1e-5)


def test_refusals_keep_their_reason(bridge):
    p = chatml([{"role": "user", "content": "w5"}])
    status, body = post(bridge, {"query": [p + "w40"], "prompts": [p], "labels": [""]})
    assert status == 400 and "label" in body["error"]["message"]
    status, body = post(bridge, {"prompts": [p]})
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    status, body = post(bridge, {"query": ["elsewhere"], "prompts": [p], "labels": ["x"]})
    assert status == 400 and "prompt" in body["error"]["message"]
    # An rmr1 error keeps its gRPC code: an assistant-only conversation is INVALID_ARGUMENT there.
    bad = "<|im_start|>assistant\nw5<|im_end|>\n"
    status, body = post(bridge, {"query": [bad + "w40"], "prompts": [bad], "labels": ["w9"]})
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT" and "user" in body["error"]["message"]


def test_health(bridge):
    with urllib.request.urlopen(bridge + "/health", timeout=10) as res:
        assert res.status == 200 and json.loads(res.read()) == {"status": "SERVING"}


def test_unreachable_rmr1_is_503_unavailable():
    import threading

    from rmr1_server import free_port

    from rmr1_client import RetryPolicy
    from rmr1_client.openrlhf_bridge import make_server
    from rmr1_client.rewards import Rewarder

    rewarder = Rewarder(f"127.0.0.1:{free_port()}", timeout=5, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
    httpd = make_server(rewarder, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        status, body = post(url, {"query": ["w5 w40"], "prompts": ["w5"], "labels": ["w9"]})
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"
    finally:
        httpd.shutdown()
        httpd.server_close()
