"""Offline batch inference: ``tensorgate batch`` over tables (Parquet, CSV, JSON Lines,
NPY/NPZ) with the runtime a model version has when served, and its Ray Data adapter.

- ``sources``: input files, their formats and schema, read in fixed row chunks.
- ``mapping``: table columns -> model inputs (checked before any work), row conversion
  with bad rows set aside, and the model's requests (large batches; rows of similar
  length grouped for variable-length inputs).
- ``outputs``: model outputs -> Arrow columns (tensors as nested fixed-size lists).
- ``manifest``: the run's fingerprint and completed chunks, written atomically.
- ``writer``: Parquet part files and error files, committed atomically; final merge.
- ``runner``: load the model as the server does, then read, run and write overlapped.
- ``cli``: the ``batch`` subcommand. ``ray``: the Ray Data ``map_batches`` class.
"""
