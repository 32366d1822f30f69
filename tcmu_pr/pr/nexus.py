"""I_T nexus identity, in the textual form the ``pr_info`` blob stores.

The string form ``<initiator>,i,0x<isid>,<target port>,t,0x<tpgt>`` is the one SUSE's
target_core_rbd and the TCMU PR series write (``"%s,i,0x%llx,%s,t,0x%x"``).  It is kept
verbatim (hex digits as written) so that a decoded blob re-encodes byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Longest nexus string a v1 peer accepts: its buffer is 484 bytes including the NUL.
NEXUS_MAX_LEN = 483

# SCSI protocol identifiers (SPC-4 table 362) used for TransportIDs.
PROTO_FC = 0x0
PROTO_SAS = 0x6
PROTO_ISCSI = 0x5

_HEX = re.compile(r"[0-9a-fA-F]{1,16}")
_ISID = re.compile(r"[0-9a-fA-F]{0,16}")
_NAME = re.compile(r"[\x21-\x7e]+")  # printable, no space: sub-fields are space separated
_FC_WWPN = re.compile(r"([0-9a-fA-F]{2}:){7}[0-9a-fA-F]{2}")
_NAA64 = re.compile(r"naa\.[0-9a-fA-F]{16}")


class NexusError(ValueError):
    """A nexus string that is not ``<init>,i,0x<isid>,<tport>,t,0x<tpgt>``."""


@dataclass(frozen=True, slots=True)
class Nexus:
    """One I_T nexus: initiator port (name + ISID) and target port (WWN + TPG tag).

    ``isid`` and ``tpgt`` hold hex digits exactly as written (no ``0x``), so equality is
    textual, as it is for v1 peers that compare the strings with ``strncmp``.  An empty
    ``isid`` means "no ISID given" (an iSCSI TransportID of format 00b): such a nexus
    stands for the initiator name with any ISID, see :meth:`same_initiator_port`.
    """

    initiator: str
    isid: str
    target: str
    tpgt: str

    def __post_init__(self) -> None:
        for name in ("initiator", "target"):
            value = getattr(self, name)
            if not _NAME.fullmatch(value) or "," in value:
                raise NexusError(f"{name} {value!r} must be printable, without spaces or commas")
        if not _ISID.fullmatch(self.isid):
            raise NexusError(f"isid {self.isid!r} must be 0-16 hex digits")
        if not _HEX.fullmatch(self.tpgt):
            raise NexusError(f"tpgt {self.tpgt!r} must be 1-16 hex digits")
        if len(str(self)) > NEXUS_MAX_LEN:
            raise NexusError(f"nexus is {len(str(self))} characters, at most {NEXUS_MAX_LEN}")

    @classmethod
    def parse(cls, text: str) -> Nexus:
        parts = text.split(",")
        if (
            len(parts) != 6
            or parts[1] != "i"
            or parts[4] != "t"
            or not parts[2].startswith("0x")
            or not parts[5].startswith("0x")
        ):
            raise NexusError(f"not an I_T nexus (<init>,i,0x<isid>,<tport>,t,0x<tpgt>): {text!r}")
        return cls(parts[0], parts[2][2:], parts[3], parts[5][2:])

    @classmethod
    def make(cls, initiator: str, target: str, *, isid: int = 0, tpgt: int = 1) -> Nexus:
        """Build a nexus the way the kernel formats one (``%llx`` / ``%x``)."""
        return cls(initiator, f"{isid:x}", target, f"{tpgt:x}")

    def __str__(self) -> str:
        return f"{self.initiator},i,0x{self.isid},{self.target},t,0x{self.tpgt}"

    @property
    def isid_value(self) -> int:
        return int(self.isid, 16) if self.isid else 0

    def same_initiator_port(self, other: Nexus) -> bool:
        """Same initiator port; an empty ISID on this side matches any ISID."""
        return self.initiator == other.initiator and (not self.isid or self.isid == other.isid)

    def same_target_port(self, other: Nexus) -> bool:
        return self.target == other.target and self.tpgt == other.tpgt

    @property
    def tpgt_value(self) -> int:
        return int(self.tpgt, 16)

    @property
    def protocol(self) -> int:
        """SCSI protocol of the initiator port, inferred from the name's form.

        LIO names iSCSI initiators ``iqn.``/``eui.``, SAS ones (tcm_loop too) ``naa.`` + 16
        hex digits and FC ones as colon-separated WWPNs; anything else is treated as iSCSI.
        """
        name = self.initiator
        if _FC_WWPN.fullmatch(name):
            return PROTO_FC
        if _NAA64.fullmatch(name) and self.isid_value == 0:
            return PROTO_SAS
        return PROTO_ISCSI
