"""Micro-benchmark: decoding a KServe v2 JSON inference request, old path against new.

Old: orjson parses the whole header, every ``data`` element a Python float, then
``np.asarray`` converts the list. New: tensorgate._ext.jsondata cuts the ``data``
arrays out, orjson parses the rest, and each array goes straight into FP32 bytes.
Both are timed through ``decode_infer`` itself (``split_data=False`` for the old
path, which is also the fallback for headers the scan does not vouch for). Prints the
median µs per decode of each.

The bodies hold one FP32 input of standard-normal values, written the way clients
write them: "short" as orjson (and our own encoder) prints float32 values (shortest
round-trip digits, ~11 bytes each), "17dig" as ``json.dumps(arr.tolist())`` prints
them (float32 widened to double, 17 significant digits, ~20 bytes each).

    python -m bench.json_decode_micro [--samples 15] [--min-time 0.05] [--sizes 16,12288]

Not run in CI: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import orjson

from bench.codec_micro import median_ns
from tensorgate.http import v2

SIZES = (16, 12_288, 262_144)


def body(count: int, style: str) -> bytes:
    values = np.random.default_rng(0).standard_normal(count).astype(np.float32)
    doc = {
        "id": "bench",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, count], "data": values}],
        "outputs": [{"name": "output"}],
    }
    if style == "short":
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    doc["inputs"][0]["data"] = values.tolist()
    return json.dumps(doc).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.05)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="element counts, comma-separated")
    args = parser.parse_args()
    print(f"{'elements':>9} {'style':>6} {'bytes':>9} {'old µs':>10} {'new µs':>10} "
          f"{'speed-up':>8}")
    for count in (int(n) for n in args.sizes.split(",")):
        for style in ("short", "17dig"):
            data = body(count, style)
            old = functools.partial(v2.decode_infer, data, None, "model", "", split_data=False)
            new = functools.partial(v2.decode_infer, data, None, "model", "")
            # The paths must agree before their times mean anything.
            assert [bytes(x) for x in old().raw_input_contents] == \
                [bytes(x) for x in new().raw_input_contents]
            t_old = median_ns(old, args.samples, args.min_time) / 1000
            t_new = median_ns(new, args.samples, args.min_time) / 1000
            print(f"{count:>9} {style:>6} {len(data):>9} {t_old:>10.1f} {t_new:>10.1f} "
                  f"{t_old / t_new:>7.2f}x")


if __name__ == "__main__":
    main()
