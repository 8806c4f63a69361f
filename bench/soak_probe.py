"""Open-loop probe that records *when* each failed request failed and why.

    python bench/soak_probe.py 127.0.0.1:8001 1500 60   # URL, requests/s, seconds

For chasing soak errors (bench/results/2026-11-23-soak/): the soak's own open-loop
load (bench/soak.py), without RSS sampling, printing the count by status and the first
failures with their time offset and details.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402  (bench/ is not a package on this path)


def main(url: str, rate: float, seconds: float) -> None:
    failures: list = []
    ok, errors = asyncio.run(soak.open_loop(url, rate, seconds, None, [], failures))
    print(f"ok {ok}, errors {dict(errors)}")
    for failure in failures[:20]:
        print(failure)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
