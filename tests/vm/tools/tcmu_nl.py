#!/usr/bin/env python3
"""Send one request to the TCM-USER generic-netlink family and print the answer as JSON.

    tcmu_nl.py get-nexus DEVICE_ID HANDLE
    tcmu_nl.py raw CMD [TYPE:KIND:VALUE ...]      KIND is u8, u16, u32, u64 or str

Prints {"attrs": {...}} for a reply (known attributes by name, others as "attr<N>": hex) or
{"errno": N, "msg": "..."} for a netlink error (msg: the kernel's extended ack, if any).
Written straight from the uapi numbers of the nexus-handle patch (kernel/patches), with
nothing from the project's own netlink code, so it checks the kernel against the ABI text.
Runs in the guest with Debian's python3 only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270

TCMU_CMD_GET_NEXUS = 12
TCMU_ATTR_PAD = 3
TCMU_ATTR_DEVICE_ID = 8
TCMU_ATTR_NEXUS_HANDLE = 11
#: attribute number -> (name, struct format or "str")
ATTRS = {
    8: ("device_id", "=I"),
    11: ("handle", "=I"),
    12: ("proto", "=B"),
    13: ("initiator", "str"),
    14: ("isid", "=Q"),
    15: ("target", "str"),
    16: ("tpgt", "=H"),
    17: ("rtpi", "=H"),
    18: ("sessions", "=I"),
}
KINDS = {"u8": "=B", "u16": "=H", "u32": "=I", "u64": "=Q"}


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes((-length) % 4)


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


class Genl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, family: int, cmd: int, version: int, attrs: bytes) -> tuple[int, object]:
        """(0, reply attributes) or (errno, extack message)."""
        self.seq += 1
        body = struct.pack("=BBH", cmd, version, 0) + attrs
        self.sock.send(struct.pack("=IHHII", 16 + len(body), family,
                                   NLM_F_REQUEST | NLM_F_ACK, self.seq, os.getpid()) + body)
        reply: dict[int, bytes] | None = None
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                msg = data[pos + 16:pos + length]
                pos += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", msg, 0)[0]
                    if error:
                        tlvs = parse_attrs(msg[4 + 16:])
                        text = tlvs.get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode()
                        return error, text
                    return 0, reply if reply is not None else {}
                reply = parse_attrs(msg[4:])

    def family_id(self, name: str) -> int:
        error, attrs = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                                    nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))
        if error:
            raise SystemExit(f"no generic netlink family {name}: errno {error}")
        return struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0]


def decode(attrs: dict[int, bytes]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind, payload in sorted(attrs.items()):
        if kind == TCMU_ATTR_PAD:
            continue
        name, fmt = ATTRS.get(kind, (f"attr{kind}", ""))
        if fmt == "str":
            out[name] = payload.rstrip(b"\0").decode()
        elif fmt and len(payload) == struct.calcsize(fmt):
            out[name] = struct.unpack(fmt, payload)[0]
        else:
            out[name] = payload.hex()
    return out


def encode(spec: str) -> bytes:
    kind, fmt, value = spec.split(":", 2)
    if fmt == "str":
        return nla(int(kind), value.encode() + b"\0")
    return nla(int(kind), struct.pack(KINDS[fmt], int(value, 0)))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "get-nexus":
        cmd = TCMU_CMD_GET_NEXUS
        attrs = (nla(TCMU_ATTR_DEVICE_ID, struct.pack("=I", int(argv[1], 0)))
                 + nla(TCMU_ATTR_NEXUS_HANDLE, struct.pack("=I", int(argv[2], 0))))
    elif len(argv) >= 2 and argv[0] == "raw":
        cmd, attrs = int(argv[1], 0), b"".join(encode(a) for a in argv[2:])
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    genl = Genl()
    error, result = genl.request(genl.family_id("TCM-USER"), cmd, 2, attrs)
    if error:
        print(json.dumps({"errno": error, "msg": result}))
    else:
        print(json.dumps({"attrs": decode(result)}))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
