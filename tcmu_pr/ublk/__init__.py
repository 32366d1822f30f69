"""ublk: a LU's store served as a local block device /dev/ublkbN (docs/ublk.md).

``control`` speaks to /dev/ublk-control, ``server`` runs one device's queues in its own
process, ``registry`` remembers what a server serves (for ``list`` and ``recover``),
``commands`` is the ``tcmu-pr ublk`` command line.
"""
