"""Numbers the C loop (native/ring.h) and Python share: the verdict word, error codes, limits.

One definition for Python: the pure-Python loop, the handler, the conflict table and the
native wrapper all import them from here.  native/ring.h has its own ``RING_*`` macros,
since C cannot import Python; tests/test_ring_abi.py reads those through the compiled cffi
module and asserts each equals its name here, so the two cannot drift apart.
"""

from __future__ import annotations

#: Bits of the per-device verdict word (tcmu_pr.engine.conflict.verdict computes it).
#: READ(6/10/12/16/32) may run on this nexus.
VERDICT_READ = 1
#: WRITE(6/10/12/16/32) may run on this nexus.
VERDICT_WRITE = 2
#: A unit attention is pending for this nexus: hand every command to Python.
VERDICT_UA = 4
#: In a nexus slot: published, the handle is resolved (nexus mode only).
VERDICT_KNOWN = 8
#: Nexus handles with a verdict slot in the loops: 1..NEXUS_SLOTS-1.
NEXUS_SLOTS = 1024

# Negative results of the loops' calls (below -1000: never an -errno).
ERR_MAILBOX = -1001  # mailbox fields out of bounds
ERR_HEAD = -1002  # cmd_head misaligned or beyond the ring
ERR_ENTRY = -1003  # entry header: len 0, past cmd_head or the ring end, unknown op
ERR_PENDING = -1004  # punted commands still wait for complete()
ERR_NOT_CMD = -1005  # complete/cdb/data_out on an offset that is no pending CMD
ERR_IOV = -1006  # iovec outside the data area

#: Punted entries one process() call hands out at most.
MAX_PUNTS = 64
