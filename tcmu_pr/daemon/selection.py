"""Which TCMU devices this daemon serves, when several daemons share one kernel.

Every process listening to TCM-USER hears every device's netlink commands, and the kernel
takes the first ``*_DONE`` for a device as *the* answer.  Two gateways on one host (two
daemon processes, e.g. one per iSCSI target) therefore split the devices by name: each one
serves and answers only the devices its globs select, and stays silent about the others,
so exactly one reply reaches the kernel per command.  With no globs a daemon serves every
``tcmu-pr`` device (the single-daemon case) and answers for unknown devices as before.

Globs (fnmatch) are matched against the backstore name (``lu1.p1.i2``, as ``tcmu-pr
layout`` names devices ``<lu>.p<port>.i<initiator>``) and against its configfs key
``user_<hba>/<name>``.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from tcmu_pr.netlink.devconfig import DeviceStringError, split_uio_name
from tcmu_pr.netlink.family import Attr, Message
from tcmu_pr.netlink.service import NetlinkService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceSelection:
    """The ``devices`` globs of one daemon; empty: every device."""

    globs: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.globs

    def selects(self, uio_name: str) -> bool:
        """Whether the device named ``tcm-user/<hba>/<name>/<dev_config>`` is ours."""
        if self.everything:
            return True
        try:
            hba, name, _ = split_uio_name(uio_name)
        except DeviceStringError:
            return False  # not a name we could serve anyway: another daemon's business
        keys = (name, f"user_{hba}/{name}")
        return any(fnmatch.fnmatchcase(k, g) for g in self.globs for k in keys)


class SelectiveService(NetlinkService):
    """The netlink service, silent about devices another daemon selected.

    A command is ignored (no reply) when its TCMU_ATTR_DEVICE names a device outside the
    selection that we do not serve.  Devices we serve are always answered, even if the
    selection changed since (it cannot today: it is fixed at start).
    """

    selection: DeviceSelection = DeviceSelection()

    def dispatch(self, msg: Message) -> Message | None:
        if not self.selection.everything:
            name, device_id = msg.get(Attr.DEVICE), msg.get(Attr.DEVICE_ID)
            ours = isinstance(device_id, int) and self.device(device_id) is not None
            if isinstance(name, str) and not ours and not self.selection.selects(name):
                log.debug("%s for %s: not selected, left to another daemon",
                          msg.command_name, name)  # fmt: skip
                return None
        return super().dispatch(msg)
