"""ONNX Runtime sessions and the loaded model versions that own them."""
