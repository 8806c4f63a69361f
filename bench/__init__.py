"""TensorGate's benchmarks: the load harness (bench.harness, ``python -m bench``), the
bench models (bench.models), the servers compared (bench.peers), scenarios and results.
"""
