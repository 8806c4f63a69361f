"""Protobuf code generated from proto/ by setup.py (never edited by hand).

The generated modules register their descriptors in ``POOL``, a pool private to
TensorGate, not in protobuf's default pool: ``tritonclient`` registers the same
``inference.*`` message names there, and one process must be able to import both.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
