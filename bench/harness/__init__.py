"""The load harness: scenario -> request bytes -> worker processes -> merged results.

scenario.py   the scenario file and overrides, with bounds
payload.py    inputs from the scenario / ModelMetadata; request bytes built once
control.py    metadata, config, readiness and ModelStatistics (non-hot RPCs)
loadgen.py    one worker's closed or open loop on a raw-bytes grpc.aio call
workers.py    worker processes (spawned, one uvloop loop each), common start time
histogram.py  HDR histograms: record, merge, percentiles
runner.py     a scenario against one server: steps, merge, server statistics
perf_analyzer.py  the same steps through Triton's perf_analyzer
agree.py      both drivers on the same steps: the margin between them
compare.py    several servers in turn, one table of ratios to TensorGate
results.py    JSON document, Markdown tables, machine description
chart.py      latency vs throughput PNG
"""
