"""Variable-length batching: requests of similar length share a batch, padded.

A text or speech model takes sequences of different lengths; the batcher only batches
requests whose shapes match, so with varied lengths almost every batch is one request.
A model turns this on in its config.pbtxt::

    parameters { key: "variable_length_batching"
                 value { string_value: "input_ids:0,attention_mask:0" } }

naming each padded input with its pad value. The padded axis is that input's one
variable (-1) non-batch dimension; every padded input of a request has the same length
there. Requests are grouped by a length bucket (two per doubling from 8 by default), the
batch is padded to its longest request in the gather step, run once, and each output
whose dimension has the padded input's symbolic name in the ONNX graph is sliced back
to its request's own length (others, e.g. pooled outputs, are per row already).

Further keys (all optional):
- ``variable_length_buckets``: ``pow2:N`` (N bounds per doubling of the length, from
  8; default ``pow2:2``: 8, 11, 16, 23, 32, 45, 64, ...; ``pow2``: 8, 16, 32, ...),
  ``step:N`` (multiples of N), or an explicit list ``8,16,32,64`` (longer requests:
  their own bucket each).
- ``variable_length_outputs``: ``NAME:AXIS,...`` or ``NAME:none``: which outputs follow
  the padded length (AXIS counts non-batch dimensions from 0), where the graph's
  dimension names can't tell (or to override them).
- ``variable_length_tolerance``: the largest difference allowed between a request run
  alone and run padded, checked at load (default 1e-4, relative to the output's scale).

Correctness is checked, not assumed: at load the model runs generated inputs alone and
padded inside a batch; a model whose outputs change under padding is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorgate.errors import InvalidArgument, ModelLoadError

PARAMETER = "variable_length_batching"
BUCKETS = "variable_length_buckets"
OUTPUTS = "variable_length_outputs"
TOLERANCE = "variable_length_tolerance"
DEFAULT_TOLERANCE = 1e-4
MIN_POW2_BUCKET = 8
# Two buckets per doubling of length: measured on the 2-core machine with a MiniLM-sized
# encoder at lengths 5..64, c=32 (bench/varlen.py), pow2 (one per doubling) padded 27%
# and gained 1.06x over no variable-length batching; finer buckets padded 8% and gained
# 1.2-1.4x.
DEFAULT_BUCKETS = "pow2:2"


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        if not sep or not name or not value:
            raise ModelLoadError(f"config.pbtxt parameters {what}: '{item}' is not NAME:VALUE")
        pairs.append((name.strip(), value.strip()))
    if not pairs:
        raise ModelLoadError(f"config.pbtxt parameters {what}: names nothing")
    return pairs


def _bucketing(text: str):
    """The bucket of a length: the smallest bucket bound that holds it."""
    text = text.strip() or DEFAULT_BUCKETS
    if text == "pow2" or text.startswith("pow2:"):
        try:
            per_octave = int(text[5:]) if text != "pow2" else 1
        except ValueError:
            per_octave = 0
        if not 1 <= per_octave <= 8:
            raise ModelLoadError(
                f"config.pbtxt parameters {BUCKETS}: '{text}' needs pow2 or pow2:N, N in 1..8"
            )
        # Bounds 8 x 2^(i/N), rounded: the padding a request can get stays a fixed
        # fraction of its length at any length (pow2:2 -> 8, 11, 16, 23, 32, 45, 64, ...).
        cache: dict[int, int] = {}

        def bucket(length: int) -> int:
            found = cache.get(length)
            if found is None:
                i = 0
                while (found := round(MIN_POW2_BUCKET * 2 ** (i / per_octave))) < length:
                    i += 1
                if len(cache) < 1 << 16:
                    cache[length] = found
            return found
        return bucket
    if text.startswith("step:"):
        try:
            step = int(text[5:])
        except ValueError:
            step = 0
        if step < 1:
            raise ModelLoadError(f"config.pbtxt parameters {BUCKETS}: '{text}' needs step:N, N >= 1")
        return lambda length: -(-length // step) * step
    try:
        bounds = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        bounds = []
    if not bounds or bounds[0] < 1:
        raise ModelLoadError(
            f"config.pbtxt parameters {BUCKETS}: '{text}' is not pow2, step:N or a list of "
            "lengths"
        )

    def listed(length: int) -> int:
        for bound in bounds:
            if length <= bound:
                return bound
        return length  # past the last bound: only equal lengths share a batch
    return listed


@dataclass(frozen=True)
class PaddedInput:
    name: str
    axis: int  # in the request array, the batch dimension included
    pad: object  # the pad value, in the input's dtype


@dataclass(frozen=True)
class VarLenPlan:
    inputs: tuple[PaddedInput, ...]
    outputs: dict  # output name -> axis in the output array (batch dimension included)
    bucket: object  # length -> bucket bound
    tolerance: float

    # -- per request (event loop) -------------------------------------------------------

    def shape_key(self, arrays: dict) -> tuple:
        """The request's batching key: its length's bucket and its other dimensions.
        Raises InvalidArgument when its padded inputs disagree on the length."""
        length = -1
        for p in self.inputs:
            got = arrays[p.name].shape[p.axis]
            if length == -1:
                length = got
            elif got != length:
                first = self.inputs[0].name
                raise InvalidArgument(
                    f"variable-length inputs must have one length: '{first}' has {length}, "
                    f"'{p.name}' has {got} (config parameter {PARAMETER})"
                )
        bucket = self.bucket(length)
        padded = {p.name: p.axis for p in self.inputs}
        return (bucket,) + tuple(
            tuple(-1 if padded.get(name) == i + 1 else d for i, d in enumerate(a.shape[1:]))
            for name, a in arrays.items()
        )

    def length(self, arrays: dict) -> int:
        p = self.inputs[0]
        return arrays[p.name].shape[p.axis]

    # -- per batch (worker thread) ---------------------------------------------------

    def gather(self, batch, gather_fixed) -> tuple[dict, int, int]:
        """The batch's feed with padded inputs padded to its longest request; also the
        real and padded element counts of its padded inputs (the padding overhead)."""
        lengths = [self.length(p.inputs) for p in batch]
        longest = max(lengths)
        total = sum(p.rows for p in batch)
        feed = {}
        real = padded = 0
        padded_names = set()
        for spec in self.inputs:
            first = batch[0].inputs[spec.name]
            shape = list(first.shape)
            shape[0], shape[spec.axis] = total, longest
            buf = np.full(shape, spec.pad, dtype=first.dtype)  # numpy fills without the GIL
            start = 0
            index = [slice(None)] * len(shape)
            for p, length in zip(batch, lengths):
                part = p.inputs[spec.name]
                index[0] = slice(start, start + p.rows)
                index[spec.axis] = slice(0, length)
                buf[tuple(index)] = part
                start += p.rows
                real += part.size
            padded += buf.size
            feed[spec.name] = buf
            padded_names.add(spec.name)
        rest = [p for p in batch[0].inputs if p not in padded_names]
        if rest:
            feed.update(gather_fixed(batch, rest))
        return feed, real, padded

    def scatter(self, batch, names: list[str], values: list) -> None:
        """Each request's outputs: its rows, and its own length where the output follows
        the padded one."""
        start = 0
        axes = [self.outputs.get(n) for n in names]
        for p in batch:
            end = start + p.rows
            length = self.length(p.inputs)
            out = {}
            for name, value, axis in zip(names, values, axes):
                part = value[start:end]
                if axis is not None:
                    index = [slice(None)] * part.ndim
                    index[axis] = slice(0, length)
                    part = part[tuple(index)]
                out[name] = part
            p.outputs = out
            start = end


def plan_from_config(config, inputs: dict, outputs: dict, graph_inputs, graph_outputs):
    """The plan a model's config asks for, checked against its specs and graph; None
    when it does not ask. ``graph_*``: onnxruntime NodeArgs (their symbolic dims)."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    text = params.get(PARAMETER)
    if text is None:
        for key in (BUCKETS, OUTPUTS, TOLERANCE):
            if key in params:
                raise ModelLoadError(f"config.pbtxt parameters {key}: needs {PARAMETER}")
        return None
    if config.max_batch_size <= 0 or not config.HasField("dynamic_batching"):
        raise ModelLoadError(
            f"config.pbtxt parameters {PARAMETER}: needs max_batch_size > 0 and "
            "dynamic_batching (it groups queued requests into batches)"
        )
    graph_in = {n.name: list(n.shape or ()) for n in graph_inputs}
    graph_out = {n.name: list(n.shape or ()) for n in graph_outputs}
    padded = []
    dim_names = set()
    for name, pad_text in _pairs(text, PARAMETER):
        spec = inputs.get(name)
        if spec is None:
            raise ModelLoadError(
                f"config.pbtxt parameters {PARAMETER}: no input '{name}' (inputs: "
                + ", ".join(inputs) + ")"
            )
        if spec.dtype.wire == "BYTES" or spec.model_dims is not None:
            raise ModelLoadError(
                f"config.pbtxt parameters {PARAMETER}: input '{name}' is "
                + ("BYTES" if spec.dtype.wire == "BYTES" else "reshaped")
                + "; only numeric inputs without reshape can be padded"
            )
        variable = [i for i, d in enumerate(spec.dims) if d == -1]
        if len(variable) != 1:
            raise ModelLoadError(
                f"config.pbtxt parameters {PARAMETER}: input '{name}' has {len(variable)} "
                f"variable dimensions in {list(spec.dims)}; padding needs exactly one"
            )
        try:
            dtype = np.dtype(spec.dtype.numpy)
            pad = dtype.type(float(pad_text) if dtype.kind == "f" else int(pad_text))
        except (ValueError, OverflowError):
            raise ModelLoadError(
                f"config.pbtxt parameters {PARAMETER}: pad value '{pad_text}' of input "
                f"'{name}' is not a {spec.dtype.wire} value"
            ) from None
        axis = variable[0] + 1
        padded.append(PaddedInput(name, axis, pad))
        dims = graph_in.get(name, [])
        if len(dims) > axis and isinstance(dims[axis], str):
            dim_names.add(dims[axis])
    output_axes: dict = {}
    overrides = dict(_pairs(params[OUTPUTS], OUTPUTS)) if OUTPUTS in params else {}
    for name, spec in outputs.items():
        if name in overrides:
            value = overrides.pop(name)
            if value == "none":
                continue
            try:
                axis = int(value)
            except ValueError:
                axis = -1
            if not 0 <= axis < len(spec.dims):
                raise ModelLoadError(
                    f"config.pbtxt parameters {OUTPUTS}: '{name}:{value}' is not an axis of "
                    f"its {len(spec.dims)} non-batch dimensions (or none)"
                )
            output_axes[name] = axis + 1
            continue
        dims = graph_out.get(name, [])
        follows = [i for i, d in enumerate(dims) if i > 0 and isinstance(d, str)
                   and d in dim_names]
        if follows:
            output_axes[name] = follows[0]
        elif any(d == -1 for d in spec.dims) and not dim_names:
            raise ModelLoadError(
                f"config.pbtxt parameters {PARAMETER}: output '{name}' has a variable "
                "dimension and the graph names no dimension of the padded inputs; say "
                f"whether it follows the padded length in {OUTPUTS} (NAME:AXIS or NAME:none)"
            )
    if overrides:
        raise ModelLoadError(
            f"config.pbtxt parameters {OUTPUTS}: no output " + ", ".join(overrides)
        )
    try:
        tolerance = float(params.get(TOLERANCE, DEFAULT_TOLERANCE))
    except ValueError:
        raise ModelLoadError(f"config.pbtxt parameters {TOLERANCE}: not a number") from None
    return VarLenPlan(tuple(padded), output_axes, _bucketing(params.get(BUCKETS, "")), tolerance)


def check_padding_invariance(plan: VarLenPlan, inputs: dict, run, label: str) -> None:
    """Run generated requests alone and padded in one batch with a longer one; refuse
    the model (ModelLoadError, with the largest difference) if an answer changes beyond
    the plan's tolerance. Generated values: 1 for integer inputs (a valid token id and
    mask for most text models), random normals for floating-point ones; other inputs:
    ones of length 1 where their dimensions are variable."""
    rng = np.random.default_rng(0)
    padded = {p.name: p for p in plan.inputs}

    def request(length: int) -> dict:
        feed = {}
        for name, spec in inputs.items():
            dims = []
            for i, d in enumerate(spec.dims):
                if name in padded and i + 1 == padded[name].axis:
                    dims.append(length)
                else:
                    dims.append(1 if d == -1 else d)
            shape = (1, *dims)
            if np.dtype(spec.dtype.numpy).kind == "f":
                feed[name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
            else:
                feed[name] = np.ones(shape, dtype=spec.dtype.numpy)
        return feed

    short, long = request(3), request(11)

    class _Req:  # the batcher's view of a request, as gather and scatter use it
        def __init__(self, feed):
            self.inputs, self.rows, self.outputs = feed, 1, None

    alone = run(short)
    names = list(alone)
    batch = [_Req(short), _Req(long)]

    def concat(batch, names_):
        return {n: np.concatenate([p.inputs[n] for p in batch]) for n in names_}

    feed, _, _ = plan.gather(batch, concat)
    together = run(feed)
    plan.scatter(batch, names, [together[n] for n in names])
    for name in names:
        want, got = alone[name], batch[0].outputs[name]
        if want.shape != got.shape:
            raise ModelLoadError(
                f"{PARAMETER}: output '{name}' has shape {list(got.shape)} padded and "
                f"{list(want.shape)} alone (say how it follows the length in {OUTPUTS})"
            )
        if want.dtype.kind not in "fc":
            same = np.array_equal(want, got)
            diff = 0.0 if same else float("inf")
        else:
            scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
            diff = float(np.max(np.abs(want - got))) / scale if want.size else 0.0
        if not diff <= plan.tolerance:
            raise ModelLoadError(
                f"{PARAMETER}: {label} is not padding-invariant: output '{name}' changes by "
                f"{diff:.3g} (relative) when its request is padded from 3 to 11, more than "
                f"the tolerance {plan.tolerance:g} ({TOLERANCE}); the model must ignore "
                "padded positions (e.g. mask them) to batch variable lengths"
            )
