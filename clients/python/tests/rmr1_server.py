"""Starting and stopping a real ``rmr1 serve`` on loopback (tests and the benchmark)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
_READY = re.compile(r"rmr1 serving on (\S+) ")


def rmr1_binary() -> Path:
    """``$RMR1_BIN``, else the repo's ``target/release/rmr1``."""
    path = Path(os.environ.get("RMR1_BIN") or REPO_ROOT / "target" / "release" / "rmr1")
    if not path.is_file():
        raise FileNotFoundError(f"rmr1 binary not found at {path}: build it (cargo build --release) or set RMR1_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rmr1Server:
    """``rmr1 serve --model MODEL`` as a child process; ``addr`` is set once it is SERVING.

    ``metrics_listen`` is ``--metrics-listen`` ("off", or ``127.0.0.1:PORT`` for ``/metrics``).
    """

    def __init__(
        self,
        model: Path,
        *,
        port: int = 0,
        served_name: str = "tiny",
        metrics_listen: str = "off",
        extra_args: tuple[str, ...] = (),
        binary: Path | None = None,
    ) -> None:
        self.cmd = [
            str(binary or rmr1_binary()), "serve", "--model", str(model), "--family", "instruct",
            "--served-name", served_name, "--listen", f"127.0.0.1:{port}", "--metrics-listen", metrics_listen,
            "--kv-cache-mib", "256", *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None
        self.log: deque[str] = deque(maxlen=200)

    def start(self, timeout: float = 120.0) -> Rmr1Server:
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"), NO_COLOR="1")
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        ready = threading.Event()

        def drain() -> None:  # keeps reading so the server never blocks on a full pipe
            assert self.proc and self.proc.stderr
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.addr = m.group(1)
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        end = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"rmr1 serve did not come up: {' '.join(self.cmd)}\n" + "\n".join(self.log))
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Rmr1Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
