"""Triton's classification extension: an output asked for with the ``classification``
parameter (``tritonclient``'s ``InferRequestedOutput(name, class_count=k)``) comes back
as the top k classes of each batch row instead of the raw tensor.

Each class is a BYTES element ``"value:index"``, or ``"value:index:label"`` when the
output's ``label_filename`` (a file in the model directory, one label per line) has a
line for that index. Values are written as C's ``std::to_string`` writes them (six
decimals for floats), classes in descending value order, ties by ascending index. The
tensor's shape is ``[batch, min(k, classes)]`` for a batching model, ``[min(k, classes)]``
otherwise, as in Triton.
"""

from __future__ import annotations

import numpy as np

from tensorgate.errors import InvalidArgument

CLASSIFICATION = "classification"
# Triton's bound on the classes sorted per row (pathological outputs cost CPU, memory).
MAX_CLASSIFICATION_ELEMENTS = 1_000_000
_SORTABLE = frozenset(
    ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64")
)


def classification_count(params: dict, spec) -> int:
    """The k an output's parameters ask for; 0 when they don't ask for classes."""
    value = params.get(CLASSIFICATION)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"invalid value type for 'classification' parameter, expected int64_param "
            f"(output '{spec.name}' got {value!r})"
        )
    if value <= 0:
        raise InvalidArgument(
            f"invalid value for 'classification' parameter, expected >= 0 (output "
            f"'{spec.name}' got {value}; the class count must be at least 1)"
        )
    if spec.dtype.wire not in _SORTABLE:
        raise InvalidArgument(
            f"class result not available for output due to unsupported type "
            f"'{spec.dtype.wire}' (output '{spec.name}')"
        )
    return value


def read_labels(path) -> list[str]:
    """One label per line (trailing newline and carriage return dropped)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:f}"  # std::to_string(float|double): "%f"
    return str(value)


def top_classes(
    value: np.ndarray, k: int, batched: bool, labels: list[str] | None
) -> np.ndarray:
    """The classification tensor (object array of bytes) for one output's values."""
    rows = value.reshape((value.shape[0], -1) if batched and value.ndim > 0 else (1, -1))
    classes = rows.shape[1]
    if classes > MAX_CLASSIFICATION_ELEMENTS:
        raise InvalidArgument("classification output tensor too large")
    take = min(k, classes)
    out = np.empty((rows.shape[0], take), dtype=object)
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:take]
        for j, index in enumerate(order.tolist()):
            text = f"{_format(row[index].item())}:{index}"
            if labels is not None and index < len(labels):
                text += ":" + labels[index]
            out[r, j] = text.encode("utf-8")
    return out if batched and value.ndim > 0 else out.reshape(take)
