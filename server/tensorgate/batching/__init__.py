"""The Python face of the native batcher (``tensorgate._ext.batcher``)."""
