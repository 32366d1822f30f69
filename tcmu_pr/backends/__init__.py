"""Backing stores: where a LU's data and its ``pr_info`` slot live.

``open_slot("file:PATH")`` / ``open_slot("rbd:POOL/IMAGE")`` is the only place that knows
which implementation a store spec names.
"""
