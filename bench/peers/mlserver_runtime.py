"""MLServer custom runtime serving an ONNX model through onnxruntime.

Runs inside MLServer's virtualenv (bench/.venvs/mlserver): mlserver.py copies this file
next to the model-settings.json it writes, and MLServer imports it from there by the
``implementation`` path ``mlserver_runtime.OnnxRuntimeModel``. MLServer 1.7.1 has no
ONNX runtime of its own; this is the usual way to serve one.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        # The intra-op thread count from config.pbtxt (1 for the bench models), like
        # every server in the comparison.
        extra = self.settings.parameters.extra or {}
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # With adaptive batching on, payload is the batch MLServer merged from requests.
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value)
                     for name, value in zip(self._output_names, results)],
        )
