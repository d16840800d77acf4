from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rmr1_server import Rmr1Server  # noqa: E402
from tiny_model import JUDGE_SPEC, write_tiny_model  # noqa: E402

from rmr1_client import Client  # noqa: E402

#: Judge tokens per order in the tests: enough for verdict tokens to appear, fast on 2 cores.
TOKENS = 12


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-judge"), JUDGE_SPEC)


@pytest.fixture(scope="session")
def server(tiny_model):
    with Rmr1Server(tiny_model) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    with Client(server.addr, timeout=60) as c:
        yield c
