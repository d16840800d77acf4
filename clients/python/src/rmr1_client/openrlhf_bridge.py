"""OpenRLHF: its remote reward-model HTTP protocol, answered by forwarding to rmr1.

    python -m rmr1_client.openrlhf_bridge --rmr1 rmr1-host:50051 --port 5000 [--host 0.0.0.0]
    # then: openrlhf.cli.train_ppo_ray ... --reward.remote_url http://bridge-host:5000/get_reward

Follows OpenRLHF v0.11.0: ``openrlhf/utils/agent.py`` ``SingleTurnAgentExecutor._fetch_rewards_via_http``
POSTs ``{"query": [...], "prompts": [...], "labels": [...]}`` (``query`` = prompt + response
decoded with special tokens kept; ``prompts`` = the chat-templated prompt text; ``labels`` = the
dataset's ``--label_key`` column) and reads ``rewards`` (for advantages), ``scores`` (in [0, 1],
for dynamic filtering) and ``extra_logs`` (logged) from the JSON reply, one entry per query;
``openrlhf/cli/serve_rm.py`` is the reference server (``POST /get_reward``). v0.11 sends one
sample per request; older releases (``openrlhf/utils/remote_rm_utils.py``, v0.8) sent batches,
which the bridge also takes.

Per item: with a non-empty label the reward is P(response beats label) (reference mode, both
orders); items without a label are ranked against the other responses to the same prompt in the
request (group mode: soft win rate). An unlabelled prompt with a single response cannot be judged
pairwise: the request is refused (HTTP 400) rather than given a made-up reward. rmr1 failures
become HTTP errors that keep the gRPC code: INVALID_ARGUMENT 400, UNAVAILABLE/RESOURCE_EXHAUSTED
503, DEADLINE_EXCEEDED 504, others 502; the body is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import RMR1Error
from .rewards import Rewarder, RewardStats, group_by_prompt, prompt_conversation
from .types import Verdict

__all__ = ["parse_prompt", "split_response", "score_request", "make_server", "main"]

logger = logging.getLogger("rmr1_client.openrlhf_bridge")

#: End-of-turn / padding tokens a decoded response may end with (the query keeps special tokens).
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>", "<|end|>")
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n?(.*?)(?:<\|im_end\|>|$)", re.S)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|$)", re.S)
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503, "DEADLINE_EXCEEDED": 504}


class BadRequest(ValueError):
    """A request the bridge cannot answer (HTTP 400)."""


def parse_prompt(prompt: str, *, system: str = "merge") -> list[dict[str, str]]:
    """A chat-templated prompt (ChatML or Llama 3) back into messages; other text is one user turn.

    The generation prompt's empty assistant header at the end is dropped.
    """
    for pattern in (_CHATML, _LLAMA3):
        turns = [(role, content.strip()) for role, content in pattern.findall(prompt)]
        if turns:
            while turns and turns[-1][0] == "assistant" and not turns[-1][1]:
                turns.pop()
            return prompt_conversation([{"role": r, "content": c} for r, c in turns], system=system)
    return [{"role": "user", "content": prompt.strip()}]


def split_response(query: str, prompt: str) -> str:
    """The response part of ``query`` (prompt + response), without trailing end tokens."""
    at = query.find(prompt) if prompt else 0
    if at < 0:
        raise BadRequest("a query does not contain its prompt; cannot tell where the response starts")
    response = query[at + len(prompt):]
    stripped = True
    while stripped:
        stripped = False
        response = response.rstrip()
        for tok in END_TOKENS:
            if response.endswith(tok):
                response = response[: -len(tok)]
                stripped = True
    return response


def score_request(rewarder: Rewarder, body: dict[str, Any]) -> dict[str, Any]:
    """The reply to one ``/get_reward`` body."""
    queries = body.get("query")
    if not isinstance(queries, list):
        raise BadRequest('the body needs "query": a list of strings')
    prompts = body.get("prompts") or [""] * len(queries)
    labels = body.get("labels") or [None] * len(queries)
    if not (len(prompts) == len(labels) == len(queries)):
        raise BadRequest(f"{len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels")
    conversations = [parse_prompt(p, system=rewarder.system) for p in prompts]
    responses = [split_response(q, p) for q, p in zip(queries, prompts)]
    rewards: list[float | None] = [None] * len(queries)
    invalid = [0.0] * len(queries)

    labelled = [i for i, lab in enumerate(labels) if lab not in (None, "")]
    if labelled:
        stats = RewardStats()
        got = rewarder.against_references(
            [conversations[i] for i in labelled], [responses[i] for i in labelled],
            [labels[i] for i in labelled], stats,
        )
        for i, r, v in zip(labelled, got, stats.verdicts):
            rewards[i] = r
            invalid[i] = 1.0 if v in (Verdict.INVALID, None) else 0.0
    unlabelled = [i for i in range(len(queries)) if i not in set(labelled)]
    if unlabelled:
        groups = group_by_prompt([conversations[i] for i in unlabelled])
        if any(len(g) < 2 for g in groups):
            raise BadRequest(
                "a prompt without a label has a single response in this request: pairwise judging needs "
                "a label (reference answer, OpenRLHF --label_key) or several responses to the same prompt"
            )
        stats = RewardStats()
        got = rewarder.rank_groups(
            [conversations[i] for i in unlabelled], [responses[i] for i in unlabelled], stats
        )
        for i, r in zip(unlabelled, got):
            rewards[i] = r
    values = [float("nan") if r is None else float(r) for r in rewards]
    return {"rewards": values, "scores": values, "extra_logs": {"rmr1_invalid": invalid}}


class _Handler(BaseHTTPRequestHandler):
    server: BridgeServer

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/") != "/health":
            return self._reply(404, {"error": {"code": "NOT_FOUND", "message": "POST /get_reward; GET /health"}})
        try:
            status = self.server.rewarder.client.health()
        except RMR1Error as e:
            return self._reply(503, {"status": "UNREACHABLE", "error": {"code": e.code.name, "message": e.message}})
        self._reply(200 if status == "SERVING" else 503, {"status": status})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") not in ("/get_reward", ""):
            return self._reply(404, {"error": {"code": "NOT_FOUND", "message": "POST /get_reward"}})
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            self._reply(200, score_request(self.server.rewarder, body))
        except (BadRequest, json.JSONDecodeError, ValueError) as e:
            self._reply(400, {"error": {"code": "INVALID_ARGUMENT", "message": str(e)}})
        except RMR1Error as e:
            logger.warning("rmr1 call failed: %s", e)
            self._reply(_HTTP_STATUS.get(e.code.name, 502), {"error": {"code": e.code.name, "message": e.message}})

    def log_message(self, format: str, *args: Any) -> None:  # quieter than stderr per request
        logger.info("%s %s", self.address_string(), format % args)


class BridgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], rewarder: Rewarder) -> None:
        super().__init__(address, _Handler)
        self.rewarder = rewarder


def make_server(rewarder: Rewarder, host: str = "127.0.0.1", port: int = 5000) -> BridgeServer:
    """An HTTP server answering OpenRLHF's ``POST /get_reward`` (call ``serve_forever``)."""
    return BridgeServer((host, port), rewarder)


def _on_error(value: str) -> Any:
    return "raise" if value == "raise" else float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rmr1_client.openrlhf_bridge",
        description="Serve OpenRLHF's remote reward-model API (POST /get_reward) from an rmr1 judge server.",
    )
    parser.add_argument("--rmr1", required=True, help="the rmr1 server, host:port")
    parser.add_argument("--port", type=int, default=5000, help="HTTP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 for other nodes)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="judge tokens per order")
    parser.add_argument("--one-order", action="store_true", help="reference mode: judge one order only")
    parser.add_argument("--score", choices=("win_rate", "score"), default="win_rate",
                        help="group-mode reward (win_rate keeps scores in [0, 1] for dynamic filtering)")
    parser.add_argument("--invalid", type=float, default=0.5, help="reward of a judgment with no verdict")
    parser.add_argument("--on-error", type=_on_error, default="raise", help="'raise' (HTTP error) or a reward")
    parser.add_argument("--system", choices=("merge", "drop", "keep"), default="merge", help="system messages")
    parser.add_argument("--model", default=None, help="served model name (default: the server's default)")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of each rmr1 call, seconds")
    parser.add_argument("--token", default=None, help="bearer token for rmr1 (behind a proxy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rewarder = Rewarder(
        args.rmr1, max_new_tokens=args.max_new_tokens, both_orders=not args.one_order, score=args.score,
        invalid=args.invalid, on_error=args.on_error, system=args.system, model=args.model, timeout=args.timeout,
        token=args.token,
    )
    server = make_server(rewarder, args.host, args.port)
    port = server.server_address[1]
    print(f"rmr1 OpenRLHF bridge on http://{args.host}:{port}/get_reward -> rmr1 {args.rmr1}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
