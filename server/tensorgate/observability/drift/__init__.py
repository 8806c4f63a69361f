"""Drift monitoring: a version's served inputs and outputs against its reference profile.

- features.py: which features a version's tensors have (element positions of small
  tensors, per-row summaries of large ones, lengths and categories of BYTES), and their
  values for a batch of rows; shared by the profile and the monitor.
- stats.py: reference bins, histograms, PSI, KS, summaries (pure numpy).
- profile.py: ``tensorgate profile`` -> ``<model>/<version>/profile.json``.
- monitor.py: ``DriftMonitor``, the data-plane observer (references onto a bounded
  queue) and repository listener (reads a version's profile at load), with the thread
  that summarises windows; ``VersionMonitor.last`` is read by /metrics
  (observability/metrics.py, DriftCollector) and by rollout guards (routing/rollout.py).

README.md, "Drift monitoring", describes it for users.
"""

from tensorgate.observability.drift.monitor import (
    DriftMonitor,
    VersionMonitor,
    Window,
    prediction_drift,
)

__all__ = ["DriftMonitor", "VersionMonitor", "Window", "prediction_drift"]
