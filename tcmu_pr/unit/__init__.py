"""One logical unit at run time: the compare-and-swap apply loop and the process's view of the LU.

This is where the pure engine meets a store and the local devices; the daemon, the ring
handler and the tools drive a LU only through here.
"""
