"""How JudgeBatch results become ``Judgment`` / ``RMR1Error`` items (all but the last test need no
server)."""

from __future__ import annotations

import pickle

import grpc
import pytest

from rmr1_client import NO_RETRY, Judgment, RetryPolicy, RMR1Error, _requests
from rmr1_client._core import Batch, rejection_name
from rmr1_client._proto.rmr1.v1 import judge_pb2, judge_pb2_grpc

PAIR = {"question": "w5 w6", "response_a": "w9", "response_b": "w10"}


def _error_result(
    request_id: str, code: int, message: str, rejection: judge_pb2.BatchRejection
) -> judge_pb2.JudgeBatchResult:
    return judge_pb2.JudgeBatchResult(
        request_id=request_id, error=judge_pb2.BatchError(code=code, message=message, rejection=rejection)
    )


def test_a_duplicate_rejection_is_kept_on_the_error():
    res = _error_result("3", grpc.StatusCode.ALREADY_EXISTS.value[0], "request_id 3 is already in flight",
                        judge_pb2.BATCH_REJECTION_DUPLICATE_REQUEST_ID)
    index, error = Batch.item_result(res)
    assert index == 3
    assert isinstance(error, RMR1Error)
    assert (error.code, error.request_id, error.rejection) == (
        grpc.StatusCode.ALREADY_EXISTS, "3", "DUPLICATE_REQUEST_ID"
    )
    assert error.message == "request_id 3 is already in flight"
    again = pickle.loads(pickle.dumps(error))
    assert (again.code, again.message, again.request_id, again.rejection) == (
        error.code, error.message, error.request_id, error.rejection
    )


@pytest.mark.parametrize(
    "value, name",
    [
        (judge_pb2.BATCH_REJECTION_UNSPECIFIED, None),
        (judge_pb2.BATCH_REJECTION_DUPLICATE_REQUEST_ID, "DUPLICATE_REQUEST_ID"),
        (judge_pb2.BATCH_REJECTION_MISSING_REQUEST_ID, "MISSING_REQUEST_ID"),
        (judge_pb2.BATCH_REJECTION_SHUTTING_DOWN, "SHUTTING_DOWN"),
        (42, "UNKNOWN_42"),  # a value added to the proto after these stubs
    ],
)
def test_rejection_names(value, name):
    assert rejection_name(value) == name
    _, error = Batch.item_result(_error_result("0", grpc.StatusCode.INVALID_ARGUMENT.value[0], "no", value))
    assert isinstance(error, RMR1Error) and error.rejection == name


def test_an_ordinary_item_error_has_no_rejection():
    _, error = Batch.item_result(_error_result("1", grpc.StatusCode.INVALID_ARGUMENT.value[0], "max_new_tokens", 0))
    assert isinstance(error, RMR1Error) and error.rejection is None and error.request_id == "1"


def test_a_judgment_result_maps_to_its_index():
    res = judge_pb2.JudgeBatchResult(
        request_id="2", response=judge_pb2.JudgeResponse(request_id="2", model="tiny", verdict=judge_pb2.VERDICT_A)
    )
    index, judgment = Batch.item_result(res)
    assert index == 2 and isinstance(judgment, Judgment) and judgment.model == "tiny"


def _shutting_down(request_id: str) -> RMR1Error:
    _, error = Batch.item_result(_error_result(
        request_id, grpc.StatusCode.UNAVAILABLE.value[0], "shutting down", judge_pb2.BATCH_REJECTION_SHUTTING_DOWN
    ))
    assert isinstance(error, RMR1Error)
    return error


def test_finish_round_keeps_the_rejection():
    batch = Batch([PAIR, PAIR], {"max_new_tokens": 4}, concurrency=2, policy=NO_RETRY)
    sent = batch.next_round()
    assert sent == [0, 1]
    batch.finish_round(sent, {1: _shutting_down("1")}, stream_error=None)
    assert batch.next_round() is None
    missing, rejected = batch.outcome()
    assert isinstance(missing, RMR1Error) and missing.rejection is None and missing.request_id == "0"
    assert missing.code == grpc.StatusCode.INTERNAL
    assert isinstance(rejected, RMR1Error) and rejected.rejection == "SHUTTING_DOWN" and rejected.attempts == 1


def test_items_without_a_result_take_the_stream_error_and_its_rejection():
    batch = Batch([PAIR, PAIR], {}, concurrency=2, policy=NO_RETRY)
    stream_error = RMR1Error(grpc.StatusCode.FAILED_PRECONDITION, "refused", rejection="SHUTTING_DOWN")
    batch.finish_round(batch.next_round(), {}, stream_error=stream_error)
    for i, result in enumerate(batch.outcome()):
        assert isinstance(result, RMR1Error) and result is not stream_error
        assert (result.code, result.request_id, result.rejection) == (
            grpc.StatusCode.FAILED_PRECONDITION, str(i), "SHUTTING_DOWN"
        )


def test_a_retryable_rejection_is_sent_again():
    batch = Batch([PAIR], {}, concurrency=1, policy=RetryPolicy(max_attempts=2))
    sent = batch.next_round()
    batch.finish_round(sent, {0: _shutting_down("0")}, stream_error=None)
    assert batch.pending == [0]
    batch.finish_round(batch.next_round(), {0: _shutting_down("0")}, stream_error=None)
    [last] = batch.outcome()
    assert isinstance(last, RMR1Error) and last.rejection == "SHUTTING_DOWN" and last.attempts == 2


def test_the_server_names_duplicate_and_missing_request_ids(server):
    """A raw stream (``judge_many`` never sends these): a second "1" while the first is in flight,
    and an item without an id."""
    items = [_requests.judge_request("w5 w6", "w9", "w10", max_new_tokens=64, request_id=rid) for rid in ("1", "1", "")]
    with grpc.insecure_channel(server.addr) as channel:
        results = [Batch.item_result(res)[1] for res in judge_pb2_grpc.JudgeServiceStub(channel).JudgeBatch(
            iter(items), timeout=60)]
    errors = sorted((e for e in results if isinstance(e, RMR1Error)), key=lambda e: e.rejection or "")
    assert [(e.request_id, e.rejection, e.code) for e in errors] == [
        ("1", "DUPLICATE_REQUEST_ID", grpc.StatusCode.INVALID_ARGUMENT),
        ("", "MISSING_REQUEST_ID", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    assert [type(r) for r in results].count(Judgment) == 1  # the first "1" is judged
