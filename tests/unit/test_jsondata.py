"""The JSON data-array decoder (tensorgate._ext.jsondata) against the path it replaces.

The oracle for ``parse_data`` is what decode_infer did with every ``data`` array before:
``np.asarray(orjson.loads(span), dtype).tobytes()`` (the stdlib's json where orjson
refuses NaN or Infinity). The parser must give those bytes exactly, or None where the
reference raises (and it may give None where the reference decides by numpy's own
rules); for plain well-formed numbers of the datatype it must not give None, or a
parser that always declined would pass.

The oracle for ``split_input_data`` is decode_infer itself with the split turned off
(``split_data=False``): the same request fields, or the same error message, for
adversarial headers.
"""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tensorgate._ext import jsondata
from tensorgate.dtypes import BY_WIRE
from tensorgate.errors import InvalidArgument
from tensorgate.http import v2

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = ["FP16", "FP32", "FP64"]
INTS = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
NUMERIC = ["BOOL", *INTS, *FLOATS]
WS = ["", "", "", " ", "\n", "\t", "\r\n  "]

# ---------------------------------------------------------------------------------------
# The reference and the comparison.


def reference(span: bytes, datatype: str) -> bytes | None:
    try:
        value = orjson.loads(span)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(span)
        except ValueError:
            return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on overflow to inf; same bytes
        try:
            arr = np.asarray(value, dtype=BY_WIRE[datatype].numpy)
        except (ValueError, TypeError, OverflowError):
            return None
    return None if arr.dtype == object else arr.tobytes()


def same(got: bytes, want: bytes, datatype: str) -> bool:
    """Bit for bit, except that any NaN equals any NaN."""
    if got == want:
        return True
    dtype = BY_WIRE[datatype].numpy
    if dtype.kind != "f" or len(got) != len(want):
        return False
    a, b = np.frombuffer(got, dtype), np.frombuffer(want, dtype)
    both_nan = np.isnan(a) & np.isnan(b)
    bits = np.dtype(f"u{dtype.itemsize}")
    return bool(np.all(both_nan | (a.view(bits) == b.view(bits))))


def check(span: bytes, datatype: str, must_parse: bool) -> None:
    want = reference(span, datatype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FP16's cast warns on overflow, as numpy does
        parsed = jsondata.parse_data(span, 0, len(span), datatype)
    if parsed is None:
        assert not must_parse, f"declined a plain {datatype} array: {span[:300]!r}"
        return
    got, nonfinite = parsed
    assert want is not None, f"parsed what the reference refuses: {span[:300]!r}"
    assert same(got, want, datatype), (datatype, span[:300], got[:64], want[:64])
    assert nonfinite == (b"NaN" in span or b"Infinity" in span)


# ---------------------------------------------------------------------------------------
# Tokens: (text, plain) where plain means the parser must take it for the datatype.

SPECIAL_FLOATS = [
    "0", "-0", "0.0", "-0.0", "0e0", "-0E-0", "1E+30", "1e-7", "1E-7", "2.5e+3", "-1e300",
    "5e-324", "4.9406564584124654e-324", "2.4703282292062328e-324",  # half the smallest
    "2.4703282292062327e-324", "2.2250738585072011e-308", "2.2250738585072014e-308",
    "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
    "1e400", "-1e400", "1e-400", "9007199254740993", "9007199254740992.5",
    "18446744073709551615", "-18446744073709551615", "9223372036854775807",
    "-9223372036854775808", "0.1", "0.30000000000000004", "3.4028234663852886e38",
    "3.4028235677973366e38", "1.1754943508222875e-38", "1.401298464324817e-45",
    "65504", "65519.99", "65520", "6.103515625e-05", "5.960464477539063e-08",
    "123456789012345678901234567890", "0.000000000000000000000000000001234",
    "1.00000000000000011102230246251565404236316680908203125",  # halfway, > 19 digits
    "NaN", "Infinity", "-Infinity", "1e22", "1e23", "9999999999999999999e-3",
]


@st.composite
def halfway_token(draw) -> str:
    """A decimal exactly halfway between two doubles, in at most 19 digits: round half
    to even decides it (the rarely taken branch of Eisel-Lemire)."""
    low = draw(st.integers(2**52, 2**63 - 1))
    low = float(low)
    high = float(np.nextafter(low, np.inf))
    mid = (int(low) + int(high)) if low >= 2**53 else None
    if mid is None:  # below 2**53 the neighbours are 1 apart: the midpoint ends in .5
        digits = str(int(low) * 10 + 5)
        return digits + "e-1"
    # mid is twice the midpoint: an integer in [2**54, 2**64)
    half = mid // 2
    if mid % 2:
        return f"{mid * 5}e-1"
    return draw(st.sampled_from([f"{half}e0", f"{half}E+0", f"{half}.0" if half < 10**18
                                 else f"{half}e0"]))


@st.composite
def float_token(draw) -> tuple[str, bool]:
    kind = draw(st.integers(0, 6))
    if kind == 6:
        return draw(halfway_token()), True
    if kind == 0:
        text = draw(st.sampled_from(SPECIAL_FLOATS))
        # ints beyond uint64 follow numpy's int rules: the parser may leave them
        return text, not (text.lstrip("-").isdigit() and abs(int(text)) >= 2**64)
    if kind == 1:  # decimal digit strings of any length, any exponent
        digits = draw(st.text("0123456789", min_size=1, max_size=30)).lstrip("0") or "0"
        cut = draw(st.integers(1, len(digits)))
        text = digits[:cut] + ("." + digits[cut:] if cut < len(digits) else "")
        if draw(st.booleans()):
            text += draw(st.sampled_from("eE")) + draw(st.sampled_from(["", "+", "-"]))
            text += str(draw(st.integers(0, 400)))
        text = draw(st.sampled_from(["", "-"])) + text
        is_int = text.lstrip("-").isdigit()
        return text, not is_int or abs(int(text)) < 2**64
    x = draw(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True))
    if math.isnan(x):
        return "NaN", True
    if math.isinf(x):
        return ("Infinity" if x > 0 else "-Infinity"), True
    if kind == 2:
        return repr(x), True
    if kind == 3:  # float32 values written as float32 or as their widened double
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f32 = np.float32(x)
        if not np.isfinite(f32):
            return repr(x), True
        return draw(st.sampled_from([str(f32), repr(float(f32))])), True
    if kind == 4:
        precision = draw(st.integers(0, 20))
        text = f"{x:.{precision}e}"
        return (text.upper() if draw(st.booleans()) else text), True
    if abs(x) < 1e19 and x == int(x):
        return str(int(x)), True   # an integer token into a float dtype
    return f"{x:.17g}", True


def int_token(datatype: str):
    info = np.iinfo(BY_WIRE[datatype].numpy)
    lo, hi = int(info.min), int(info.max)
    in_range = st.one_of(
        st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 1, lo + 1, hi - 1]),
        st.integers(lo, hi),
    ).map(lambda v: (str(v), True))
    beyond = st.one_of(
        st.integers(hi + 1, hi + 2**70), st.integers(lo - 2**70, lo - 1),
    ).map(lambda v: (str(v), False))
    odd = st.sampled_from(["-0", "1.0", "1e2", "2.5", "-1.5", "NaN", "Infinity", "true",
                           "null", "1E0", "0.0"]).map(lambda t: (t, t == "-0"))
    return st.one_of(in_range, in_range, in_range, beyond, odd)


BOOL_TOKEN = st.one_of(
    st.sampled_from([("true", True), ("false", True)]),
    st.sampled_from([("1", False), ("0", False), ("0.5", False), ("null", False)]),
)


def token_for(datatype: str):
    if datatype in FLOATS:
        return float_token()
    if datatype == "BOOL":
        return BOOL_TOKEN
    return int_token(datatype)


@st.composite
def nested_array(draw, datatype: str) -> tuple[str, bool]:
    """A JSON array of the datatype's tokens, rectangular or (sometimes) not; plain
    when every token is plain and the nesting rectangular."""
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    count = math.prod(shape)
    tokens = draw(st.lists(token_for(datatype), min_size=count, max_size=count))
    ragged = draw(st.integers(0, 9)) == 0
    ws = st.sampled_from(WS)
    it = iter(tokens)

    def build(dims: list[int]) -> str:
        if not dims:
            return next(it)[0]
        items = [build(dims[1:]) for _ in range(dims[0])]
        if ragged and items and draw(st.booleans()):
            items = items[:-1] if draw(st.booleans()) else items + [items[-1]]
        parts = [draw(ws) + item + draw(ws) for item in items]
        return "[" + ",".join(parts) + draw(ws) + "]"

    text = build(shape)
    return text, all(plain for _, plain in tokens) and not ragged


# ---------------------------------------------------------------------------------------
# parse_data


@FAST
@given(st.data())
def test_parse_data_matches_numpy_on_random_arrays(data):
    datatype = data.draw(st.sampled_from(NUMERIC))
    text, plain = data.draw(nested_array(datatype))
    check(text.encode(), datatype, plain)


@FAST
@given(st.sampled_from(NUMERIC), st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_parse_data_ragged_nesting_is_declined(datatype, path):
    """Random trees of arrays with leaves at random depths: numpy refuses all but the
    rectangular ones, and the parser must follow it both ways."""
    rng = random.Random(sum(path) * 31 + len(path))
    leaf = "true" if datatype == "BOOL" else "1"

    def tree(depth: int) -> str:
        if depth > 3 or rng.random() < 0.3:
            return leaf
        return "[" + ",".join(tree(depth + 1) for _ in range(rng.choice(path))) + "]"

    span = ("[" + ",".join(tree(1) for _ in range(path[0])) + "]").encode()
    check(span, datatype, must_parse=False)
    want = reference(span, datatype)
    assert (jsondata.parse_data(span, 0, len(span), datatype) is None) == (want is None)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("text", [
    "[]", "[[]]", "[[], []]", "[[[]], [[]]]", " [ ] ",
    "[1,]", "[,1]", "[,]", "[1 2]", "[01]", "[-01]", "[1.]", "[.5]", "[+1]", "[1e]",
    "[1e+]", "[-]", "[--1]", "[0x10]", "[1,,2]", "[-NaN]", "[+Infinity]", "[nan]",
    "[infinity]", "[Inf]", "[NaN1]", "[1]]", "[[1]", "[1}", '["1"]', "[null]",
    "[[1, 2], [3]]", "[[1], 2]", "[1, [2]]", "[[], 1]", "[[[]], [1]]", "[[1], []]",
    "[1\u00a0]", "[1\x0b]", "[\u0661]", "[1e99999999999]", "[1e-99999999999]",
    "[" * 33 + "1" + "]" * 33, "[" * 31 + "1" + "]" * 31,
    "[true, false]", "[true, 1]", "[0, 1]", "[1.5, 2]", "[-0, 0]",
    "[-1, 255, 256]", "[-129, 127]", "[32768]", "[4294967296]", "[-2147483649]",
    "[18446744073709551616]", "[-9223372036854775809]", "[99999999999999999999]",
])
def test_parse_data_edge_cases(datatype, text):
    span = text.encode()
    want = reference(span, datatype)
    parsed = jsondata.parse_data(span, 0, len(span), datatype)
    if want is None:
        assert parsed is None
    elif parsed is not None:
        assert same(parsed[0], want, datatype)


def test_parse_data_bulk_doubles_against_python_float():
    """Random bit patterns written with 17 digits and fewer: enough Eisel-Lemire calls
    that its rare second multiplication (about one in 500) runs, checked one by one."""
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**63, 30_000, dtype=np.uint64)
    values = [v for v in bits.view(np.float64).tolist() if math.isfinite(v)]
    texts = [repr(v) if i % 3 else f"{v:.{12 + i % 7}g}" for i, v in enumerate(values)]
    span = ("[" + ",".join(texts) + "]").encode()
    raw, nonfinite = jsondata.parse_data(span, 0, len(span), "FP64")
    want = np.array([float(t) for t in texts], np.float64)
    assert raw == want.tobytes() and not nonfinite


def test_parse_data_long_tokens():
    """Leading zeros beyond any digit budget, exponents of many digits, 1,000+ digit
    tokens: strtod's path or a decline, never a wrong value."""
    for text in ["0." + "0" * 15000 + "1e15005", "1" + "0" * 400 + "e-400",
                 "1." + "0" * 2000 + "1", "0." + "0" * 30 + "123456789012345678901234",
                 "1e0000000000000000000000000000001", "1e-0000000000000000000000001"]:
        for datatype in FLOATS:
            span = f"[{text}, -{text}]".encode()
            check(span, datatype, must_parse=len(text) < 1000)


@pytest.mark.parametrize("datatype", ["INT64", "UINT64", "FP64", "FP32"])
def test_parse_data_integer_limits(datatype):
    span = b"[18446744073709551615, 9223372036854775807, -9223372036854775808, -0, 0]"
    want = reference(span, datatype)
    parsed = jsondata.parse_data(span, 0, len(span), datatype)
    if datatype.startswith("FP"):
        assert same(parsed[0], want, datatype)
    else:
        assert want is None and parsed is None  # one of them is out of range
    for value in ("18446744073709551615", "-9223372036854775808", "9223372036854775807"):
        span = f"[{value}]".encode()
        want = reference(span, datatype)
        parsed = jsondata.parse_data(span, 0, len(span), datatype)
        assert (parsed is None) == (want is None), value
        if want is not None:
            assert parsed[0] == want


def test_parse_data_negative_zero():
    """The integer -0 is 0 (+0.0 in a float tensor); the float -0.0 keeps its sign."""
    for datatype, dtype in (("FP64", np.float64), ("FP32", np.float32), ("FP16", np.float16)):
        raw, _ = jsondata.parse_data(b"[-0, -0.0, -0e3]", 0, 16, datatype)
        signs = np.signbit(np.frombuffer(raw, dtype))
        assert signs.tolist() == [False, True, True]


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT32", "UINT8", "BOOL"])
def test_parse_data_large_span_without_the_gil(datatype):
    """Past 64 KiB the parser runs with the GIL released; same answer, and a failing
    element deep inside still declines."""
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        values = (rng.random(40_000) < 0.5).tolist()
    elif datatype.startswith("FP"):
        values = rng.standard_normal(40_000).tolist()
    else:
        info = np.iinfo(BY_WIRE[datatype].numpy)
        values = rng.integers(info.min, info.max, 40_000, endpoint=True).tolist()
    span = json.dumps(np.reshape(np.array(values, dtype=object), (200, 200)).tolist(),
                      separators=(",", ":")).encode()
    assert len(span) >= 1 << 16 or datatype in ("UINT8", "BOOL")
    check(span, datatype, must_parse=True)
    broken = span[:-1000] + b"x" + span[-999:]
    assert jsondata.parse_data(broken, 0, len(broken), datatype) is None


def test_parse_data_span_inside_a_buffer():
    header = memoryview(b'{"data": [1.5, 2.5], "more": [3]}')
    raw, nonfinite = jsondata.parse_data(header, 9, 19, "FP32")
    assert np.frombuffer(raw, np.float32).tolist() == [1.5, 2.5] and not nonfinite
    assert jsondata.parse_data(header, 9, 19, "BYTES") is None
    assert jsondata.parse_data(header, 9, 19, "BF16") is None
    with pytest.raises(ValueError):
        jsondata.parse_data(header, 9, 999, "FP32")


# ---------------------------------------------------------------------------------------
# split_input_data, and decode_infer with it against decode_infer without it


def outcome(body: bytes, header_length: int | None, split_data: bool):
    try:
        req = v2.decode_infer(body, header_length, "model", "1", split_data=split_data)
    except InvalidArgument as exc:
        return ("error", exc.message)
    return (
        "ok", req.id, req.parameters, req.binary_output,
        [(t.name, t.datatype, t.shape, t.parameters) for t in req.inputs],
        [bytes(raw) for raw in req.raw_input_contents],
        [(o.name, o.parameters, o.binary, o.shared_memory) for o in req.outputs],
    )


def assert_same_decode(body: bytes, header_length: int | None = None):
    got = outcome(body, header_length, split_data=True)
    want = outcome(body, header_length, split_data=False)
    if got != want and got[0] == want[0] == "ok":
        # NaN != NaN in the tuples: compare the tensor bytes NaN-aware.
        assert got[:5] == want[:5] and got[6] == want[6]
        for (_, datatype, _, _), a, b in zip(got[4], got[5], want[5]):
            assert same(a, b, datatype if datatype in BY_WIRE else "UINT8")
        return got
    assert got == want, body[:400]
    return got


def spans_of(header: bytes) -> list[bytes]:
    split = jsondata.split_input_data(header)
    return [] if split is None else [header[a:b] for _, a, b in split[1]]


def test_split_finds_data_and_leaves_the_rest_to_orjson():
    header = (b'{"id": "x \\" \\"data\\":[9]", "inputs": [\n'
              b' {"data" : [[1, 2], [3, 4]], "name": "a", "datatype": "INT32",'
              b' "shape": [2, 2], "parameters": {"data": "p"}},\n'
              b' {"name": "b\\"data\\":[8]", "datatype": "BYTES", "shape": [1],'
              b' "data": ["s]\\"", "\\u005b"]}\n'
              b'], "outputs": [{"name": "o", "data": [7]}], "data": [6]}')
    rest, spans = jsondata.split_input_data(header)
    assert [header[a:b] for _, a, b in spans] == [b"[[1, 2], [3, 4]]", b'["s]\\"", "\\u005b"]']
    assert [index for index, _, _ in spans] == [0, 1]
    doc = orjson.loads(rest)
    assert doc["inputs"][0]["data"] is None and doc["inputs"][1]["data"] is None
    assert doc["outputs"][0]["data"] == [7] and doc["data"] == [6]
    assert doc["id"] == 'x " "data":[9]' and doc["inputs"][0]["parameters"] == {"data": "p"}


def test_split_long_strings_in_data():
    """Brackets and quotes deep inside long strings, past the 32-byte blocks the
    scanner steps over."""
    for n in range(25, 75, 7):
        data = json.dumps(["a" * n + "]", "b" * n + '"[', "c" * n + "\\", "]" * n]).encode()
        header = b'{"inputs": [{"name": "s", "datatype": "BYTES", "data": ' + data + b"}]}"
        assert spans_of(header) == [data]


@pytest.mark.parametrize("header", [
    b'[{"inputs": [{"data": [1]}]}]',                          # not an object
    b'{"inputs": [{"name": "a"}]}',                            # no data at all
    b'{"inputs": [{"d\\u0061ta": [1]}]}',                      # an escaped key
    b'{"\\u0069nputs": [{"data": [1]}]}',
    b'{"inputs": [{"data": [1], "data": [2]}]}',               # duplicates
    b'{"inputs": [{"data": [1]}], "inputs": [{"data": [2]}]}',
    b'{"inputs": [{"data": [1]}]',                             # truncated
    b'{"inputs": [{"data": [1]}]} x',                          # trailing bytes
    b'{"inputs": [{"data": [1]]}',                             # mismatched
    b'{"inputs": {"data": [1]}}',                              # inputs not an array
    b'{"inputs": [[{"data": [1]}]]}',                          # not an element of it
    b'{"a": ' + b"[" * 300 + b"]" * 300 + b', "inputs": [{"data": [1]}]}',  # deep
])
def test_split_declines(header):
    assert jsondata.split_input_data(header) is None


@pytest.mark.parametrize("body", [
    # Keys in any order, data before name; strings that look like data.
    b'{"inputs": [{"data": [1, 2], "shape": [2], "datatype": "FP32", "name": "x"}]}',
    (b'{"inputs": [{"name": "x\\"data\\": [5]", "datatype": "FP32", "shape": [1], '
     b'"data": [1e-7]}], "id": "\\"data\\": [1, 2]"}'),
    (b'{"id": "\\u0064ata", "inputs": [{"name": "\\u00e9", "datatype": "FP64", '
     b'"shape": [2], "data": [1E+30, -0]}]}'),
    # parameters with a data key (refused by the parameters check, same message)
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"parameters": {"data": [1]}}]}'),
    (b'{"parameters": {"data": 1}, "inputs": [{"name": "x", "datatype": "FP32", '
     b'"shape": [1], "data": [1]}]}'),
    # outputs with data
    (b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [-128]}], '
     b'"outputs": [{"name": "y", "data": [1], "parameters": {"binary_data": true}}]}'),
    # what the reference decides: out of range, fractions, ragged, bools, scalars
    b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [256]}]}',
    b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}',
    b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": 5}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": null}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
    b'{"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "x", "datatype": 7, "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}',
    b'{"inputs": [5, {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    # NaN and Infinity: the stdlib's json then reads the rest (big ints stay ints)
    (b'{"parameters": {"seed": 18446744073709551616}, "inputs": [{"name": "x", '
     b'"datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -Infinity]}]}'),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}, '
     b'{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}'),
    b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [NaN]}]}',
    (b'{"parameters": {"p": NaN}, "inputs": [{"name": "x", "datatype": "FP32", '
     b'"shape": [1], "data": [1]}]}'),
    (b'{"parameters": {"p": 18446744073709551616}, "inputs": [{"name": "x", '
     b'"datatype": "FP32", "shape": [1], "data": [1]}]}'),
    # malformed JSON: today's error message
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1,]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1] x}]}',
    b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\xff"]}]}',
    b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    # duplicate keys, escaped keys: the whole-document path
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"data": [2]}]}'),
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "d\\u0061ta": [3]}]}',
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"d\\u0061ta": [3]}]}'),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "d\\u0061ta": [3], '
     b'"data": [1]}]}'),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], '
     b'"\\u0069nputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [2]}]}'),
    # BYTES and numbers side by side, nested BYTES
    (b'{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2, 1], '
     b'"data": [["a]"], ["\\"b["]]}, {"name": "x", "datatype": "UINT64", "shape": [2], '
     b'"data": [18446744073709551615, 0]}]}'),
    # shared memory and binary_data_size beside data: today's errors
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"parameters": {"shared_memory_region": "r"}}]}'),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"parameters": {"binary_data_size": 0}}]}'),
])
def test_decode_infer_same_with_and_without_split(body):
    assert_same_decode(body)


def test_decode_infer_nan_body_reads_the_rest_as_the_stdlib_does():
    body = (b'{"parameters": {"seed": 18446744073709551616}, "inputs": [{"name": "x", '
            b'"datatype": "FP32", "shape": [2], "data": [NaN, 1]}]}')
    got = assert_same_decode(body)
    assert got[2] == {"seed": 18446744073709551616}  # an int, as json.loads reads it
    assert spans_of(body) == [b"[NaN, 1]"]


def test_decode_infer_binary_extension_body():
    """The JSON header is followed by binary bytes that look like JSON; only the header
    is scanned, and the binary input still takes its bytes from after it."""
    header = (b'{"inputs": [{"name": "b", "datatype": "UINT8", "shape": [6], '
              b'"parameters": {"binary_data_size": 6}}, {"name": "x", "datatype": "FP32", '
              b'"shape": [2], "data": [0.5, -2]}]}')
    binary = b'"]}[{\\'
    got = assert_same_decode(header + binary, len(header))
    assert got[5] == [binary, np.array([0.5, -2], np.float32).tobytes()]
    assert spans_of(header) == [b"[0.5, -2]"]


# Random request documents: keys in random order, random whitespace, strings with
# quotes, escapes and "data" in them, parameters and outputs with data keys, several
# inputs of every datatype, and sometimes a binary section after the header.

KEY_TEXT = st.sampled_from(["name", "data", "x", 'q"data"', "da\\ta", "\u00e9", "]}"])
# Long enough to straddle the scanner's 32-byte blocks with quotes and brackets inside.
STRINGS = st.one_of(
    KEY_TEXT, st.text('ab[]{}"\\ :,\u00e9', max_size=80),
    st.builds(lambda n, c: "a" * n + c, st.integers(20, 70), st.sampled_from('[]{}"\\')),
)


def dump_string(s: str, draw) -> str:
    return json.dumps(s, ensure_ascii=draw(st.booleans()))


@st.composite
def request_body(draw) -> tuple[bytes, int | None, list[bytes] | None]:
    """(body, header length or None, the "data" texts split_input_data must find, or
    None where it must decline)."""
    ws = st.sampled_from(WS)
    found: list[str] = []

    def obj(pairs: list[tuple[str, str]]) -> str:
        pairs = draw(st.permutations(pairs))
        return "{" + ",".join(f"{draw(ws)}{k}{draw(ws)}:{draw(ws)}{v}{draw(ws)}"
                              for k, v in pairs) + "}"

    inputs = []
    binary = b""
    for i in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
        pairs = [('"name"', dump_string(draw(KEY_TEXT) + str(i), draw)),
                 ('"datatype"', json.dumps(datatype)), ('"shape"', "[1]")]
        if datatype == "BYTES":
            strings = draw(st.lists(STRINGS, max_size=3))
            found.append("[" + ",".join(dump_string(s, draw) for s in strings) + "]")
            pairs.append(('"data"', found[-1]))
        elif draw(st.integers(0, 4)) == 0:
            size = draw(st.integers(0, 8))
            binary += draw(st.binary(min_size=size, max_size=size))
            pairs.append(('"parameters"', obj([('"binary_data_size"', str(size))])))
        else:
            found.append(draw(nested_array(datatype))[0])
            pairs.append(('"data"', found[-1]))
        if draw(st.booleans()):
            pairs.append(('"parameters"', obj([('"data"', dump_string("[1, 2]", draw))])))
        inputs.append(obj(pairs))
    pairs = [('"inputs"', "[" + ",".join(draw(ws) + item for item in inputs) + "]")]
    if draw(st.booleans()):
        pairs.append(('"id"', dump_string(draw(KEY_TEXT), draw)))
    if draw(st.booleans()):
        pairs.append(('"outputs"', "[" + obj([('"name"', '"o"'), ('"data"', "[1]")]) + "]"))
    if draw(st.booleans()):
        key = dump_string(draw(KEY_TEXT), draw)
        pairs.append((key, '{"data": [[1], {"data": 2}]}'))
        if "\\" in key:
            found = []  # an escaped key at the top could be "inputs": the scan declines
    header = (draw(ws) + obj(pairs) + draw(ws)).encode()
    expected = [text.encode() for text in found] or None
    if binary or draw(st.integers(0, 9)) == 0:
        return header + binary, len(header), expected
    return header, None, expected


@FAST
@given(request_body())
def test_decode_infer_same_on_random_requests(case):
    body, header_length, expected = case
    header = body[:header_length]
    # The scan must find exactly the data values (a decline would hide a wrong scan:
    # decode_infer would still agree with itself).
    assert (spans_of(header) or None) == expected
    assert_same_decode(body, header_length)


@FAST
@given(request_body(), st.data())
def test_decode_infer_same_on_damaged_requests(case, data):
    """One byte of the header changed, removed or doubled: whatever it breaks, both
    paths must break it the same way."""
    body, header_length, _ = case
    end = header_length or len(body)
    assume(end > 0)
    at = data.draw(st.integers(0, end - 1))
    how = data.draw(st.integers(0, 2))
    if how == 0:
        byte = data.draw(st.sampled_from(b'[]{}",:\\ 0-.eN'))
        body = body[:at] + bytes([byte]) + body[at + 1:]
    elif how == 1:
        body, end = body[:at] + body[at + 1:], end - 1
    else:
        body, end = body[:at] + body[at:at + 1] + body[at:], end + 1
    assert_same_decode(body, end if header_length is not None else None)
