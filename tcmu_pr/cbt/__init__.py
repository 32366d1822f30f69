"""Change-block tracking (CBT) and copy-on-write snapshots for file LUs, blksnap-style.

geometry.py and generation.py are the pure arithmetic; layout.py the on-disk format;
mapfile.py the shared map beside the image; snapshot.py the difference storage; see
docs/cbt.md for the crash rule.
"""
