"""What a TCMU device says about itself: geometry, limits and its LU identity.

Every TCMU device that exports one image (one per gateway / I_T nexus) must report the
same VPD 0x80 serial and 0x83 NAA designator, or dm-multipath sees several disks instead
of several paths to one.  So the identity is not stored anywhere: it is derived, by a
hash, from a string that names the LU (a configured ``wwn`` or the store spec), and any
gateway that is told the same string answers with the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: LIO's IEEE OUI (Datera/"LIO-ORG"), the one LIO puts in its own NAA designators.
LIO_OUI = 0x001405

#: Block sizes SBC hosts handle well and the file backend supports.
BLOCK_SIZES = frozenset({512, 4096})

#: Bits of the NAA type 6 designator left after the NAA nibble and the 24-bit OUI.
_VENDOR_BITS = 128 - 4 - 24


class DeviceConfigError(ValueError):
    """A device configuration that no host could use (bad block size, field too long, ...)."""


def lu_serial(identity: str) -> str:
    """The unit serial number of the LU named ``identity``: 25 lower-case hex digits.

    They are the 100 vendor-specific bits of the NAA designator, so an admin can match the
    serial (``sg_inq -p 0x80``) with the WWN (``/dev/disk/by-id/wwn-0x6001405<serial>``).
    """
    if not identity:
        raise DeviceConfigError("LU identity must not be empty")
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    bits = int.from_bytes(digest, "big") >> (256 - _VENDOR_BITS)
    return f"{bits:025x}"


def lu_naa(identity: str) -> bytes:
    """The 16-byte NAA IEEE Registered Extended designator (SPC-4 §7.8.6.6.5) of the LU."""
    value = (0x6 << 124) | (LIO_OUI << _VENDOR_BITS) | int(lu_serial(identity), 16)
    return value.to_bytes(16, "big")


def _check_ascii(name: str, value: str, limit: int) -> None:
    if len(value) > limit or not all(0x20 <= ord(c) < 0x7F for c in value):
        raise DeviceConfigError(f"{name} must be at most {limit} printable ASCII characters")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Configuration of one TCMU device, as its SCSI answers need it.

    ``identity`` names the LU (not the device): give every gateway's device of one image the
    same string.  ``num_lbas`` is normally the backend size divided by ``block_size`` (see
    ``from_size``).  ``thin`` means the backend can discard and discarded blocks read back
    as zeros (LBPRZ); ``unmap_granularity`` is the backend's discard granularity in blocks
    (``provisioning.unmap_granularity``); ``rtpi`` / ``target_port_group`` add the VPD 0x83
    target port designators when the daemon knows them; ``tpgs`` is the INQUIRY TPGS field
    (0 = no ALUA).
    ``transport_descriptor`` is the SPC-4 version descriptor of the fabric the LU is exported
    on (0x0960 iSCSI), listed in standard INQUIRY after SAM-5/SPC-4/SBC-3; None (the
    default) lists none, because LIO may export one backstore over iSCSI, FC, SRP, loopback
    or vhost at once and the handler cannot see which: no claim beats a wrong one.
    ``persistent_reservations``: see the field.
    """

    identity: str
    num_lbas: int
    block_size: int = 512
    write_cache: bool = False
    thin: bool = True
    read_only: bool = False
    vendor: str = "LIO-ORG"
    product: str = "TCMU-PR"
    revision: str = "0001"
    tpgs: int = 0
    rtpi: int | None = None
    target_port_group: int | None = None
    physical_block_exponent: int = 0
    max_transfer_bytes: int = 8 * 1024 * 1024
    max_unmap_lbas: int = 0x400000
    max_unmap_descriptors: int = 256
    max_write_same_lbas: int = 0x10000
    max_compare_and_write_lbas: int = 1
    unmap_granularity: int = 1
    transport_descriptor: int | None = None
    #: The daemon answers PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE for this device (its
    #: PR engine, not the emulator): REPORT SUPPORTED OPERATION CODES then lists them.
    persistent_reservations: bool = False

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise DeviceConfigError(f"block size must be one of {sorted(BLOCK_SIZES)}")
        if not 0 < self.num_lbas < 1 << 64:
            raise DeviceConfigError("capacity must be at least one block and below 2**64 blocks")
        _check_ascii("vendor", self.vendor, 8)
        _check_ascii("product", self.product, 16)
        _check_ascii("revision", self.revision, 4)
        lu_serial(self.identity)  # rejects an empty identity
        if self.tpgs not in (0, 1, 2, 3):
            raise DeviceConfigError("tpgs must be 0..3")
        for name in ("rtpi", "target_port_group"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise DeviceConfigError(f"{name} must be 0..65535")
        if self.transport_descriptor is not None and not 0 < self.transport_descriptor <= 0xFFFF:
            raise DeviceConfigError("transport descriptor must be 1..65535")
        if not 0 <= self.physical_block_exponent <= 15:
            raise DeviceConfigError("physical block exponent must be 0..15")
        if self.max_transfer_bytes < self.block_size:
            raise DeviceConfigError("max transfer must be at least one block")
        if not 1 <= self.max_compare_and_write_lbas <= 255:
            raise DeviceConfigError("max COMPARE AND WRITE length must be 1..255 blocks")
        limits = ("max_unmap_lbas", "max_unmap_descriptors", "max_write_same_lbas")
        for name in (*limits, "unmap_granularity"):
            if not 1 <= getattr(self, name) <= 0xFFFFFFFF:
                raise DeviceConfigError(f"{name} must be 1..2**32-1")

    @classmethod
    def from_size(
        cls, identity: str, size_bytes: int, *, block_size: int = 512, **options: Any
    ) -> DeviceInfo:
        """A device over ``size_bytes`` of backend; a partial last block is not exported."""
        if block_size not in BLOCK_SIZES:
            raise DeviceConfigError(f"block size must be one of {sorted(BLOCK_SIZES)}")
        return cls(identity, size_bytes // block_size, block_size=block_size, **options)

    @property
    def serial(self) -> str:
        return lu_serial(self.identity)

    @property
    def naa(self) -> bytes:
        return lu_naa(self.identity)

    @property
    def max_transfer_lbas(self) -> int:
        return min(self.max_transfer_bytes // self.block_size, 0xFFFFFFFF)
