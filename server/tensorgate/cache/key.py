"""The response cache's key for one request: BLAKE2b over everything that changes its
answer.

Hashed after validation, from the arrays the model would get: each input's name,
datatype, shape (as the request gave it) and bytes (BYTES tensors in the v2 encoding),
in request order, then the outputs asked for, in order, with their class counts (the
classification extension). Raw and typed contents of the same values give one key, and
so do JSON and binary HTTP bodies. What does not change the answer (the request id,
priority, timeout, route key, HTTP's binary_data flags) is left out; the model and
version are not in the digest because every version has a cache of its own (a prefix of
model, version and the version's content fingerprint in Redis).

Requests with a tensor in shared memory get no key: they bypass the cache (their inputs
can change under the server, their outputs go into a client's region).
"""

from __future__ import annotations

from hashlib import blake2b

from tensorgate._ext.codec import encode_bytes_tensor
from tensorgate.shared_memory import uses_shared_memory

DIGEST_SIZE = 32
_PERSON = b"tensorgate-rc1"  # BLAKE2b personalisation: keys of this layout only


def request_key(request, arrays: dict, chosen) -> bytes | None:
    """The digest for a validated request (``arrays``: its inputs by name, as
    tensors.request_inputs returns them; ``chosen``: tensors.requested_outputs'
    answer), or None when it must bypass the cache."""
    meta = []
    buffers = []
    for tensor in request.inputs:
        params = tensor.parameters
        if params and uses_shared_memory(params):
            return None
        arr = arrays[tensor.name]
        if arr.dtype.kind == "O":  # BYTES, decoded to str: hash the wire encoding
            data = encode_bytes_tensor(arr)
            size = len(data)
        else:
            data = arr if arr.flags.c_contiguous else arr.tobytes()
            size = arr.nbytes
        meta.append((tensor.name, tensor.datatype, tuple(tensor.shape), size))
        buffers.append(data)
    if chosen is None:
        outputs = None  # every output, in the model's order
    else:
        outputs = []
        for spec, classes, span in chosen:
            if span is not None:
                return None
            outputs.append((spec.name, classes))
    h = blake2b(repr((meta, outputs)).encode(), digest_size=DIGEST_SIZE, person=_PERSON)
    for data in buffers:  # sizes are in the header above: the boundaries are fixed
        h.update(data)
    return h.digest()
