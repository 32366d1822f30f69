"""Boot the tcmu-pr test VM once and run shell jobs in it.

The VM is a stock Debian 12 userland with Debian's 6.12 kernel under QEMU/TCG (this host's
kernel has no LIO).  The checkout is shared read-write over 9p at /mnt/repo, and a per-boot
exchange folder at /mnt/io carries jobs in and their output out (see guest-init).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class VMError(RuntimeError):
    """The VM could not be built, booted, or did not answer in time."""


#: Which target_core_user.ko a VM runs: Debian's own, or the nexus-handle one from kernel/
#: (build-image puts it in /lib/modules/KVER/updates/, so a bare `modprobe` would pick it).
TcmuModule = Literal["stock", "patched"]
TCMU_MODULES: tuple[TcmuModule, ...] = ("stock", "patched")

#: Guest path of the tool that swaps target_core_user.ko (the 9p checkout).
_TCMU_MODULE_TOOL = "/mnt/repo/tests/vm/tools/tcmu_module.py"


def build_image() -> Path:
    """Build (or reuse the cached) image; returns the folder with vmlinuz/initrd/rootfs."""
    proc = subprocess.run(
        [str(HERE / "build-image")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise VMError(f"build-image failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class VM:
    """One booted VM; use as a context manager.  Jobs run one at a time, as root."""

    def __init__(self, *, memory_mb: int = 2048, cpus: int = 2, boot_timeout: float = 180.0,
                 overlay: Path | None = None, module: TcmuModule = "stock"):
        """``overlay``: the guest disk's copy-on-write file.  By default a fresh one inside
        the per-boot folder (gone after close); a caller's path is created only if missing
        and outlives the VM, so a second VM booted on it sees what the first one wrote
        (how a power cycle is tested).  ``module``: the target_core_user.ko loaded before
        the VM is handed out (see :meth:`load_tcmu`); stock by default, so tests written
        for Debian's kernel run on exactly that."""
        if module not in TCMU_MODULES:
            raise ValueError(f"module must be one of {TCMU_MODULES}, not {module!r}")
        self.image = build_image()
        self.io = Path(tempfile.mkdtemp(prefix="tcmu-pr-vm-io."))
        (self.io / "jobs").mkdir()
        (self.io / "host-repo").write_text(str(REPO))
        self.console = self.io / "console.log"
        self._seq = 0
        self._overlay = overlay or self.io / "overlay.qcow2"
        if not self._overlay.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", str(self.image / "rootfs.img"), str(self._overlay)],
                check=True,
            )
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg,tb-size=256", "-machine", "q35",
            "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "console=ttyS0 root=/dev/vda rw init=/sbin/tcmu-pr-guest-boot panic=-1 "
                       "quiet loglevel=4 net.ifnames=0",
            "-drive", f"file={self._overlay},if=virtio,format=qcow2",
            "-virtfs", f"local,path={REPO},mount_tag=repo,security_model=passthrough,id=repo",
            "-virtfs", f"local,path={self.io},mount_tag=io,security_model=passthrough,id=io",
            "-nic", "none",
        ]
        self._console_fh = open(self.console, "wb")  # noqa: SIM115 - lives as long as the VM
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._console_fh, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + boot_timeout
        while not (self.io / "ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise VMError(f"VM did not come up; console tail:\n{self.console_tail()}")
            time.sleep(0.2)
        self.module: TcmuModule | None = None
        try:
            self.load_tcmu(module)
        except VMError:
            self.close()
            raise

    def load_tcmu(self, module: TcmuModule) -> None:
        """Load the ``stock`` or ``patched`` target_core_user.ko, unloading the other.

        Call it before a layout makes TCMU devices (or after :data:`layouts.RESET`): the
        module cannot be swapped while devices use it, and this then raises."""
        if module not in TCMU_MODULES:
            raise ValueError(f"module must be one of {TCMU_MODULES}, not {module!r}")
        rc, out = self.run(f"python3 {_TCMU_MODULE_TOOL} load {module}", timeout=120)
        if rc != 0 or out.strip().splitlines()[-1:] != [module]:
            raise VMError(f"could not load the {module} target_core_user (rc {rc}):\n{out}")
        self.module = module

    @property
    def jobs(self) -> int:
        """Jobs run so far (how long this guest kernel has been worked)."""
        return self._seq

    def console_tail(self, n: int = 40) -> str:
        try:
            lines = self.console.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def run(self, script: str, *, env: dict[str, str] | None = None,
            timeout: float = 600.0) -> tuple[int, str]:
        """Run ``script`` (bash) in the VM as root; returns (exit code, stdout+stderr)."""
        self._seq += 1
        name = self.io / "jobs" / f"job{self._seq:04d}"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
        tmp = name.with_suffix(".tmp")
        tmp.write_text("set -o pipefail\n" + exports + script + "\n")
        tmp.rename(name.with_suffix(".sh"))
        rc_file = name.with_suffix(".rc")
        deadline = time.monotonic() + timeout
        while not rc_file.exists():
            if self.proc.poll() is not None:
                raise VMError(f"VM died during a job; console tail:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise VMError(f"job timed out after {timeout:.0f} s; console:\n"
                              f"{self.console_tail()}")
            time.sleep(0.1)
        return int(rc_file.read_text().strip() or 255), name.with_suffix(".out").read_text(
            errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            (self.io / "jobs" / "shutdown").touch()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._console_fh.close()
        if not os.environ.get("TCMU_PR_KEEP_VM_IO"):
            shutil.rmtree(self.io, ignore_errors=True)

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
