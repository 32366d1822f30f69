"""Glue between the host-side rig (vmrig.VM) and the layout scripts in examples/targetcli.

A layout is named ``SCRIPT[:BACKEND][@STORE]`` (``loopback-mpath:lio-ramdisk-pr``,
``iscsi-2gw``, ``iscsi-2gw@rbd``, ``iscsi-2gw:ours-nexus``); ``none`` is no layout at all.
``ours-nexus`` (one plain targetcli backstore per LU) asks for the patched target_core_user
(:func:`tcmu_module`).  ``@file`` (the default)
keeps the LU in an image file; ``@rbd`` starts the guest's own one-node Ceph cluster first
(scripts/ceph-cluster, reused while it runs, resumed on its data after a reboot) and puts the
LU on image rbd/lu1.

:func:`setup` runs the script inside the VM with the checkout on PYTHONPATH (the native ring
module built on the host loads in the guest: both are Debian 12 / CPython 3.11) and returns
the ``TCMU_PR_*`` variables it exported.
:data:`RESET` puts the VM back to "no LIO objects, no daemons we started", so tests sharing
one booted VM do not see each other's leftovers.
"""

from __future__ import annotations

import shlex
from typing import Protocol

GUEST_REPO = "/mnt/repo"
#: How every guest job runs our code: straight from the 9p checkout.
#: The host venv's site-packages come too: the guest's Debian pyroute2 (0.7) is older than the
#: one the project is written against, and both sides are CPython 3.11, so the venv's
#: packages (pure Python or abi3/cp311 builds) load in the guest unchanged.
GUEST_ENV = {
    "PYTHONPATH": f"{GUEST_REPO}:{GUEST_REPO}/.venv/lib/python3.11/site-packages",
    "TCMU_PR": "python3 -m tcmu_pr",
}
SCRIPTS = {
    "loopback-mpath": "examples/targetcli/loopback-mpath",
    "iscsi-2gw": "examples/targetcli/iscsi-2gw",
}
STORES = ("file", "rbd")
#: Where an @rbd layout's cluster lives in the guest (on its disk: a VM rebooted on the same
#: overlay finds its data again), and its LU.
GUEST_CEPH = "/var/lib/tcmu-pr-ceph"
RBD_STORE = "rbd:rbd/lu1"
#: Runs before an @rbd layout script: the cluster binds 127.0.0.1 only (no network).
CEPH_START = (f"ip link set lo up && {GUEST_REPO}/scripts/ceph-cluster start {GUEST_CEPH} >&2 "
              f"&& export CEPH_CONF={GUEST_CEPH}/ceph.conf")  # fmt: skip

#: Tear down whatever a layout left: iSCSI sessions, multipathd and its maps, all LIO config,
#: and the daemons the layout scripts started (by the pids they recorded).  multipathd must go:
#: left running it grabs the next layout's disks, and its path checker takes unit attentions
#: the tests expect their own commands to see.  (udevd may stay: scenarios that check unit
#: attentions hold its event queue, see tests/vm/scenarios/two-gateways.sh.)
RESET = r"""
iscsiadm -m node -u >/dev/null 2>&1 || true
if pgrep -x multipathd >/dev/null; then
    multipathd shutdown >/dev/null 2>&1 || true
    for _ in $(seq 50); do pgrep -x multipathd >/dev/null || break; sleep 0.1; done
    pkill -9 -x multipathd 2>/dev/null || true
fi
for dm in $(dmsetup ls --target multipath 2>/dev/null | awk '{print $1}'); do
    dmsetup remove "$dm" 2>/dev/null || true
done
python3 -c 'import rtslib_fb; rtslib_fb.RTSRoot().clear_existing(confirm=True)' || true
for pidfile in /run/tcmu-pr/daemon*.pid /run/tcmu-pr/tcmu-runner.pid; do
    [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null
    rm -f "$pidfile"
done
rm -f /etc/tcmu-pr/topology.json
for dev in /dev/rbd[0-9]*; do  # krbd mappings (noudev: udevd may not run)
    [[ -b $dev ]] && rbd unmap --options noudev "$dev" 2>/dev/null
done
true
"""


#: Removes the layouts' LUs on both stores (the images, their PR state, LIO's APTPL files),
#: so the next layout starts from nothing.  A daemon just stopped may hold the RBD image a
#: moment longer (its watch): the removal retries.
FRESH = f"""
rm -rf /var/lib/tcmu-pr /var/target/pr/* /etc/target/pr/*
if [[ -f {GUEST_CEPH}/ceph.conf ]]; then
    for _ in $(seq 60); do
        out=$(rbd --conf {GUEST_CEPH}/ceph.conf rm {RBD_STORE[4:]} 2>&1) && break
        grep -q "No such file" <<<"$out" && break
        sleep 0.5
    done
fi
true
"""


#: Backends that need the patched target_core_user (nexus handles, docs/nexus-abi.md).
PATCHED_MODULE_BACKENDS = ("ours-nexus",)


def tcmu_module(layout: str) -> str | None:
    """The target_core_user a layout needs loaded: ``patched``, or None (either will do)."""
    backend = layout.partition("@")[0].partition(":")[2]
    return "patched" if backend in PATCHED_MODULE_BACKENDS else None


class Runner(Protocol):
    def run(self, script: str, *, env: dict[str, str] | None = None,
            timeout: float = 600.0) -> tuple[int, str]: ...


class LayoutError(RuntimeError):
    """A layout script failed in the VM; carries its output."""


def command(layout: str) -> str:
    """The guest shell command that sets ``layout`` up ('' for ``none``)."""
    rest, _, store = layout.partition("@")
    name, _, backend = rest.partition(":")
    if name == "none":
        return ""
    if name not in SCRIPTS:
        raise ValueError(f"unknown layout {name!r}: one of none, {', '.join(SCRIPTS)}")
    if store and store not in STORES:
        raise ValueError(f"unknown store {store!r} in {layout!r}: @file or @rbd")
    args = [f"{GUEST_REPO}/{SCRIPTS[name]}"]
    if backend:
        args += ["--backend", backend]
    if store == "rbd":
        args += ["--store", RBD_STORE]
        return f"{CEPH_START} && {shlex.join(args)}"
    return shlex.join(args)


def parse_exports(text: str) -> dict[str, str]:
    """The ``export VAR=value`` lines of a layout script's stdout (shell-quoted values)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("export "):
            continue
        words = shlex.split(line[len("export "):])
        if len(words) != 1 or "=" not in words[0]:
            raise ValueError(f"not an export line: {line!r}")
        key, _, value = words[0].partition("=")
        env[key] = value
    return env


def setup(vm: Runner, layout: str, *, timeout: float = 600.0,
          fresh: bool = False) -> dict[str, str]:  # fmt: skip
    """Reset the VM, set ``layout`` up, and return its exported variables (+ GUEST_ENV).
    ``fresh``: remove the LUs first (new images, no PR state)."""
    cmd = command(layout)
    rc, out = vm.run(RESET + (FRESH if fresh else ""), timeout=180)
    if rc != 0:
        raise LayoutError(f"reset failed ({rc}):\n{out}")
    module = tcmu_module(layout)
    # The rig's module switch (vmrig.VM.load_tcmu, branch i11-kernel); a rig without it
    # keeps the stock module, and the layout scripts then warn that PR is not clustered.
    load = getattr(vm, "load_tcmu", None)
    if module is not None and load is not None:
        load(module)  # after RESET: no device holds the module
    if not cmd:
        return dict(GUEST_ENV)
    # stdout (the exports) goes to a file; progress on stderr stays in the job's output.
    rc, out = vm.run(f"{cmd} >/tmp/layout.env && echo ---- && cat /tmp/layout.env",
                     env=GUEST_ENV, timeout=timeout)
    if rc != 0:
        raise LayoutError(f"layout {layout} failed ({rc}):\n{out}")
    return {**GUEST_ENV, **parse_exports(out.split("----\n", 1)[-1])}
