"""The TCMU command ring: ABI layout, uio discovery, the native and Python loops, the
device handler that answers punted commands, and a hermetic kernel-side simulator."""
