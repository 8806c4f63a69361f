"""``tensorgate optimize``: cheaper versions of a model (INT8 dynamic quantisation, FP16),
measured against the original before they are written, and put on trial with the
routes' shadow and canary machinery.

convert.py makes the model (onnxruntime.quantization, onnxconverter-common), measure.py
compares answers and speed, command.py is the command, rollout.py the trial on a
running server. Needs the ``optimize`` extra for FP16 (onnxconverter-common).
"""

from tensorgate.optimize.command import add_parser, main

__all__ = ["add_parser", "main"]
