"""The cost benchmarks' common part: a ``tensorgate serve`` subprocess on free ports, and
one closed-loop step of ``python -m bench run`` against it (req/s, server CPU per
request). Used by bench/tracing_cost.py and bench/logging_cost.py."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

READY = re.compile(r"ready grpc=([\d.]+):(\d+) http=\S+ metrics=(?:([\d.]+):(\d+)|off)")


class Server:
    """``tensorgate serve`` with ``flags``; stdout (a console span exporter's) goes to
    /dev/null, the log (stderr) is read for the ready line."""

    def __init__(self, flags: list[str], timeout: float = 120.0) -> None:
        args = [sys.executable, "-m", "tensorgate", "serve", "--grpc-port", "0",
                "--http-port", "-1", *flags]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.url = self.metrics_url = ""
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                m = READY.search(line)
                if m and not ready.is_set():
                    self.url = f"{m.group(1)}:{m.group(2)}"
                    if m.group(3):
                        self.metrics_url = f"http://{m.group(3)}:{m.group(4)}"
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout):
            self.proc.kill()
            raise SystemExit(f"tensorgate serve {' '.join(flags)} never got ready")

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def closed_loop(server: Server, model: str, concurrency: int, duration: float,
                warmup: float) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) of one closed-loop step."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "bench", "run", "--url", server.url, "--model", model,
             "--concurrency", str(concurrency), "--duration", str(duration),
             "--warmup", str(warmup), "--quiet", "--output", out,
             "--server-pid", str(server.proc.pid)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        doc = json.loads((Path(out) / "results.json").read_text())
    (step,) = doc["runs"][0]["steps"]
    cpu = (step.get("server_cpu") or {}).get("us_per_request") or float("nan")
    return float(step["requests_per_s"]), float(cpu)


def add_step_arguments(parser: argparse.ArgumentParser, model: str, concurrency: int,
                       duration: float, warmup: float, repeat: int, configs: str) -> None:
    """The options every cost benchmark takes, with its own defaults."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--duration", type=float, default=duration)
    parser.add_argument("--warmup", type=float, default=warmup)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--configs", default=configs)
