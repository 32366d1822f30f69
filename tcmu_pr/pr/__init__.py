"""The PR core's values and their wire forms: state, I_T nexus, TransportID, the ``pr_info`` codec.

Pure: nothing here does I/O or imports an I/O package, so every layer (engine, stores, ring,
CLI) can share these types without pulling in the others.
"""
