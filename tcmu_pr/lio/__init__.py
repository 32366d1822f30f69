"""Laying LUs out in LIO for tcmu-pr: spec, plan, configfs convergence, the topology file.

One-way imports: ``spec`` <- ``plan`` <- ``converge``; ``topology_file`` stands alone (the
daemon reads the key and default path from it).  Only ``commands`` (the ``tcmu-pr layout``
subcommands) imports :mod:`tcmu_pr.cli`; nothing here imports ``commands``.  rtslib-fb is
imported by ``converge`` alone, lazily, so that the pure half runs anywhere.  docs/layouts.md.
"""
