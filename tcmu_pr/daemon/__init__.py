"""``tcmu-pr daemon``: netlink, rings, SCSI emulation, PR engine and stores tied together.

config.py (settings file), topology.py (which nexus a device serves), unit/lu.py (a LU's cached
PR state and verdict publication), rings.py (uio or simulated rings), devices.py (the
DeviceManager), dbus.py (targetcli's TCMUService1), main.py (the process).  docs/daemon.md.
"""
