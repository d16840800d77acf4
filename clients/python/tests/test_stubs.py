"""The committed stubs are what scripts/generate_stubs.py makes from proto/ (never stale)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = PACKAGE_ROOT / "src" / "rmr1_client" / "_proto"
REGEN = "python clients/python/scripts/generate_stubs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_stubs", PACKAGE_ROOT / "scripts" / "generate_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def test_committed_stubs_match_the_protos(tmp_path):
    gen = _generator()
    committed_version = (COMMITTED / "rmr1" / "v1" / "judge_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{gen.GRPCIO_TOOLS_VERSION}'" in committed_version
    if gen.installed_grpcio_tools() != gen.GRPCIO_TOOLS_VERSION:
        pytest.fail(f"grpcio-tools {gen.installed_grpcio_tools()} is installed, the stubs come from "
                    f"{gen.GRPCIO_TOOLS_VERSION}: install the test extra to compare them")
    fresh = tmp_path / "stubs"
    gen.generate(fresh)
    committed = _tree(COMMITTED)
    assert committed, "no committed stubs"
    stale = _differences(committed, _tree(fresh))
    assert not stale, f"stubs are stale against proto/ ({stale}); run: {REGEN}"
    # Every service of the protos is there.
    assert {"rmr1/v1/judge_pb2_grpc.py", "rmr1/v1/models_pb2_grpc.py", "rmr1/v1/training_pb2_grpc.py"} <= set(
        committed
    )


def test_a_changed_proto_is_detected(tmp_path):
    """The check above can fail: one new field makes the stubs differ."""
    gen = _generator()
    protos = tmp_path / "proto"
    shutil.copytree(gen.PROTO_ROOT, protos)
    judge = protos / "rmr1" / "v1" / "judge.proto"
    text = judge.read_text()
    assert "string invalid_reason = 3;" in text
    judge.write_text(text.replace("message BatchError {", "message BatchError {\n  string hint = 9;", 1))
    fresh = tmp_path / "stubs"
    gen.generate(fresh, protos)
    assert "rmr1/v1/judge_pb2.py" in _differences(_tree(COMMITTED), _tree(fresh))


def test_stubs_import_as_package_modules():
    from rmr1_client._proto.rmr1.v1 import judge_pb2, judge_pb2_grpc, training_pb2_grpc

    assert judge_pb2.DESCRIPTOR.package == "rmr1.v1"
    assert hasattr(judge_pb2_grpc, "JudgeServiceStub") and hasattr(training_pb2_grpc, "TrainingServiceStub")
    with pytest.raises(ImportError):
        import rmr1.v1  # noqa: F401  (no top-level package is claimed)
