#!/usr/bin/env python3
"""Drive the kernel's block-layer persistent-reservation ioctls (linux/pr.h) from the shell.

    pr_ioctl.py DEV register OLD NEW [--ignore]
    pr_ioctl.py DEV reserve KEY TYPE
    pr_ioctl.py DEV release KEY TYPE
    pr_ioctl.py DEV preempt OLD NEW TYPE [--abort]
    pr_ioctl.py DEV clear KEY

Keys are decimal or 0x-prefixed hex; TYPE is the block layer's (1 WE, 2 EA, 3 WE_RO,
4 EA_RO, 5 WE_AR, 6 EA_AR), not SCSI's.  Prints ``ok``, ``status N`` (the SCSI status the
kernel passed back, e.g. 24 = RESERVATION CONFLICT) or ``errno NAME``, and exits 0 / the
status / 1.
Uses only the merged ABI (the numbers match /usr/include/linux/pr.h on 6.x kernels).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

IOC_PR_REGISTER = 0x401870C8  # struct pr_registration {u64 old, new; u32 flags, pad}
IOC_PR_RESERVE = 0x401070C9  # struct pr_reservation {u64 key; u32 type, flags}
IOC_PR_RELEASE = 0x401070CA
IOC_PR_PREEMPT = 0x401870CB  # struct pr_preempt {u64 old, new; u32 type, flags}
IOC_PR_PREEMPT_ABORT = 0x401870CC
IOC_PR_CLEAR = 0x401070CD  # struct pr_clear {u64 key; u32 flags, pad}
PR_FL_IGNORE_KEY = 1


def _num(text: str) -> int:
    return int(text, 0)


def request(argv: list[str]) -> tuple[int, bytes]:
    op, args = argv[0], argv[1:]
    flags = PR_FL_IGNORE_KEY if "--ignore" in args else 0
    args = [a for a in args if not a.startswith("--")]
    if op == "register":
        return IOC_PR_REGISTER, struct.pack("=QQII", _num(args[0]), _num(args[1]), flags, 0)
    if op in ("reserve", "release"):
        code = IOC_PR_RESERVE if op == "reserve" else IOC_PR_RELEASE
        return code, struct.pack("=QII", _num(args[0]), int(args[1]), 0)
    if op == "preempt":
        code = IOC_PR_PREEMPT_ABORT if "--abort" in argv else IOC_PR_PREEMPT
        return code, struct.pack("=QQII", _num(args[0]), _num(args[1]), int(args[2]), 0)
    if op == "clear":
        return IOC_PR_CLEAR, struct.pack("=QII", _num(args[0]), 0, 0)
    raise SystemExit(f"unknown operation {op!r}")


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    code, arg = request(sys.argv[2:])
    fd = os.open(sys.argv[1], os.O_RDONLY)
    try:
        # A mutable buffer makes ioctl() return the call's own result: sd passes a SCSI
        # status (> 0) back that way.
        rc = fcntl.ioctl(fd, code, bytearray(arg), True)
    except OSError as exc:
        print(f"errno {errno.errorcode.get(exc.errno, exc.errno)}")
        return 1
    finally:
        os.close(fd)
    print("ok" if rc == 0 else f"status {rc}")
    return rc & 0xFF


if __name__ == "__main__":
    sys.exit(main())
