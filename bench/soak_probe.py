"""Open-loop probe that records *when* each failed request failed and why.

    python bench/soak_probe.py 127.0.0.1:8001 1500 60            # URL, requests/s, seconds
    python bench/soak_probe.py 127.0.0.1:8001 1500 60 http 127.0.0.1:8000   # or mixed

For chasing soak errors (bench/results/2026-11-23-soak/): the soak's own open-loop
load (bench/soak.py) against a server already running, without RSS sampling, printing
the count by status and the first failures with their time offset and details.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402  (bench/ is not a package on this path)


async def probe(url: str, rate: float, seconds: float, protocol: str, http_url: str):
    failures: list = []
    async with soak.Clients(protocol, url, http_url, soak.MODEL) as clients:
        ok, errors = await soak.open_loop(clients, rate, seconds, failures)
    return ok, errors, failures


def main(url: str, rate: float, seconds: float, protocol: str = "grpc",
         http_url: str = "") -> None:
    ok, errors, failures = asyncio.run(probe(url, rate, seconds, protocol, http_url))
    print(f"ok {ok}, errors {dict(errors)}")
    for failure in failures[:20]:
        print(failure)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:6])
