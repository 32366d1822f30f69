"""The TCM-USER generic-netlink side of the daemon (docs/netlink.md)."""

from tcmu_pr.netlink.service import DeviceError, DeviceManager, NetlinkService, Reconfig
from tcmu_pr.netlink.socket import FamilyNotFound, KernelTransport, PacketTransport

__all__ = [
    "DeviceError",
    "DeviceManager",
    "FamilyNotFound",
    "KernelTransport",
    "NetlinkService",
    "PacketTransport",
    "Reconfig",
]
