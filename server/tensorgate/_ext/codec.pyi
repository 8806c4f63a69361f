"""Type stub for tensorgate._ext.codec (ext/codec.pyx): the v2 wire codec."""

from collections.abc import Sequence
from typing import Union, final

from typing_extensions import Buffer

import numpy as np
import numpy.typing as npt

ParamValue = Union[bool, int, float, str, None]
OutputData = Union[bytes, npt.NDArray[np.generic]]

__all__ = [
    "WireError", "BytesTensorError", "InferRequest", "InputTensor", "RequestedOutput", "decode_infer_request",
    "encode_infer_response", "encode_stream_response", "decode_bytes_tensor",
    "encode_bytes_tensor",
]

class WireError(ValueError):
    """Malformed wire data; names the message field and the byte offset."""

class BytesTensorError(ValueError):
    """A raw BYTES tensor that does not split into the expected elements."""

    kind: str  # "fewer", "more", "cut" or "trailing"
    found: int  # elements found ("fewer", "more"), the cut element's index ("cut")
    left: int  # bytes left for the cut element ("cut") or after the last one ("trailing")

@final
class InferRequest:
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def parameters(self) -> dict[str, ParamValue]: ...
    @property
    def inputs(self) -> list[InputTensor]: ...
    @property
    def outputs(self) -> list[RequestedOutput]: ...
    @property
    def raw_input_contents(self) -> list[memoryview]:
        """Read-only views into the decoded buffer (no copy)."""

@final
class InputTensor:
    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def parameters(self) -> dict[str, ParamValue]: ...
    @property
    def contents(self) -> dict[str, Union[npt.NDArray[np.generic], list[bytes]]]:
        """Typed contents by proto field name ("fp32_contents", ...), non-empty only."""

@final
class RequestedOutput:
    @property
    def name(self) -> str: ...
    @property
    def parameters(self) -> dict[str, ParamValue]: ...

def decode_infer_request(data: Buffer) -> InferRequest: ...
def encode_infer_response(
    model_name: str,
    model_version: str,
    id: str,
    outputs: Sequence[tuple[str, str, Sequence[int], OutputData]],
    parameters: dict[str, ParamValue] | None = None,
) -> bytes: ...
def encode_stream_response(
    infer_response: Buffer | None = None, error_message: str = ""
) -> bytes: ...
def decode_bytes_tensor(data: Buffer, count: int) -> npt.NDArray[np.object_]: ...
def encode_bytes_tensor(arr: npt.ArrayLike) -> bytes: ...
