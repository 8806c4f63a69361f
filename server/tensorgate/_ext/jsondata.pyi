"""Type stub for tensorgate._ext.jsondata (ext/jsondata.pyx): the numeric ``data`` arrays
of a v2 REST request decoded straight into tensor bytes."""

from typing_extensions import Buffer

__all__ = ["parse_data", "split_input_data"]

def split_input_data(header: Buffer) -> tuple[bytes, list[tuple[int, int, int]]] | None:
    """(the header with each input's "data" value replaced by null, [(index into
    "inputs", start, end) of each such value]), or None: no "data" value, or a header
    the scan does not vouch for (parse it whole)."""

def parse_data(header: Buffer, start: int, end: int, datatype: str) -> tuple[bytes, bool] | None:
    """(tensor bytes of ``datatype``, whether a NaN or Infinity was read) for the JSON
    array in ``header[start:end]``; None where orjson + np.asarray must decide."""
