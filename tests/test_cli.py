"""The ``tcmu-pr`` command line: the ``pr`` contract, the registry, the demo and the bench."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcmu_pr import cli, scsi
from tcmu_pr.backends.file import sidecar_path
from tcmu_pr.engine.pr_cdb import (
    APTPL,
    READ_KEYS,
    REGISTER,
    RESERVE,
    parse_read_keys,
    pr_in,
    pr_out,
    write10,
)
from tcmu_pr.pr import codec, jsonform
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, Registration, Reservation

N1 = "iqn.1994-05.com.redhat:client1,i,0x23d000001,iqn.2003-01.org.linux-iscsi.gw:rbd,t,0x1"
N2 = "iqn.1994-05.com.redhat:client2,i,0x23d000002,iqn.2003-01.org.linux-iscsi.gw:rbd,t,0x2"

V1_BLOB = (
    b"0x00000001\n0x00000007\nNo SPC-2 Reservation holder\n0x00000003\n"
    b"0x0000000000abc123 " + N1.encode() + b" 0x00000005\n"
    b"0x00000001\n0x0000000000abc123 " + N1.encode() + b"\n\0"
)


def run(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    code = cli.main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "lu.img"
    img.write_bytes(b"")
    return img


def exec_json(capsysbinary, image: Path, nexus: str, cdb: bytes, data: bytes = b"") -> dict:
    argv = ["pr", "exec", "--store", f"file:{image}", "--nexus", nexus, "--cdb", cdb.hex()]
    if data:
        argv += ["--data", data.hex()]
    code, out, err = run(capsysbinary, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"status", "sense", "data"}
    return result


# -- pr decode / encode ---------------------------------------------------------------------


def test_decode_prints_the_json_form(tmp_path: Path, capsysbinary) -> None:
    blob = tmp_path / "pr_info"
    blob.write_bytes(V1_BLOB)
    code, out, _ = run(capsysbinary, "pr", "decode", str(blob))
    assert code == 0
    assert json.loads(out) == jsonform.state_to_json(codec.decode(V1_BLOB), version=1)


def test_decode_reads_stdin(monkeypatch, capsysbinary) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(V1_BLOB.rstrip(b"\0"))))
    code, out, _ = run(capsysbinary, "pr", "decode", "-")
    assert code == 0
    assert json.loads(out) == jsonform.state_to_json(codec.decode(V1_BLOB), version=1)


@pytest.mark.parametrize(
    "blob",
    [b"", b"0x00000001\n0xZZ\n\0", V1_BLOB.replace(b"0x00000005\n", b"0x00000002\n"), b"\xff\0"],
)
def test_decode_malformed_exits_2_with_one_line(tmp_path: Path, capsysbinary, blob) -> None:
    f = tmp_path / "bad"
    f.write_bytes(blob)
    code, out, err = run(capsysbinary, "pr", "decode", str(f))
    assert code == 2
    assert out == b""
    assert err.count("\n") == 1 and "malformed pr_info" in err


def test_decode_missing_file_exits_2(tmp_path: Path, capsysbinary) -> None:
    code, _, err = run(capsysbinary, "pr", "decode", str(tmp_path / "none"))
    assert code == 2 and "cannot open" in err


def test_encode_round_trips_decode_byte_for_byte(tmp_path: Path, capsysbinary) -> None:
    blob = tmp_path / "pr_info"
    blob.write_bytes(V1_BLOB)
    _, out, _ = run(capsysbinary, "pr", "decode", str(blob))
    js = tmp_path / "state.json"
    js.write_bytes(out)
    code, again, _ = run(capsysbinary, "pr", "encode", str(js))
    assert code == 0
    assert again == V1_BLOB  # binary-safe, trailing NUL included


@pytest.mark.parametrize("text", ["{", "[]", '{"generation": "x"}', "null"])
def test_encode_bad_json_exits_2(tmp_path: Path, capsysbinary, text: str) -> None:
    js = tmp_path / "state.json"
    js.write_text(text)
    code, out, err = run(capsysbinary, "pr", "encode", str(js))
    assert code == 2 and out == b""
    assert err.count("\n") == 1 and "bad PR state JSON" in err


# -- pr exec / show -------------------------------------------------------------------------


def test_exec_register_reserve_and_conflict(image: Path, capsysbinary) -> None:
    r = exec_json(capsysbinary, image, N1, *pr_out(REGISTER, sa_key=0xABC123))
    assert r == {"status": scsi.GOOD, "sense": None, "data": None}
    r = exec_json(capsysbinary, image, N1, *pr_out(RESERVE, key=0xABC123, pr_type=5))
    assert r["status"] == scsi.GOOD
    r = exec_json(capsysbinary, image, N2, pr_in(READ_KEYS))
    assert r["status"] == scsi.GOOD
    assert parse_read_keys(bytes.fromhex(r["data"])) == (1, [0xABC123])  # RESERVE: no bump
    # a non-registrant's WRITE under Write Exclusive Registrants Only: exit 0, status 0x18
    r = exec_json(capsysbinary, image, N2, write10())
    assert r == {"status": scsi.RESERVATION_CONFLICT, "sense": None, "data": None}
    state = codec.decode(sidecar_path(image).read_bytes())
    assert state.reservation == Reservation(0xABC123, Nexus.parse(N1), 5)


def test_exec_check_condition_still_exits_0(image: Path, capsysbinary) -> None:
    r = exec_json(capsysbinary, image, N1, *pr_out(RESERVE, key=0x1, pr_type=0x2))
    assert r["status"] == scsi.CHECK_CONDITION
    assert bytes.fromhex(r["sense"])[2] == scsi.ILLEGAL_REQUEST
    assert not sidecar_path(image).exists()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"--nexus": "iqn.x,i,0x1,tgt"}, "nexus"),
        ({"--cdb": "5f0"}, "hex"),
        ({"--cdb": ""}, "empty"),
        ({"--data": "zz"}, "hex"),
        ({"--rtpi": "70000"}, "65535"),
        ({"--store": "nfs:/x"}, "file:PATH"),
        ({"--store": "file:/nonexistent/lu.img"}, "does not exist"),
    ],
)
def test_exec_bad_arguments_exit_2_and_change_nothing(image, capsysbinary, change, reason) -> None:
    cdb, data = pr_out(REGISTER, sa_key=1)
    opts = {"--store": f"file:{image}", "--nexus": N1, "--cdb": cdb.hex(), "--data": data.hex()}
    opts.update(change)
    argv = ["pr", "exec", *[x for kv in opts.items() for x in kv]]
    with pytest.raises(SystemExit) as info:  # argparse's own errors exit from parse_args
        code = cli.main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    assert reason in capsysbinary.readouterr().err.decode()
    assert not sidecar_path(image).exists()


def test_show_empty_and_populated(image: Path, capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "pr", "show", "--store", f"file:{image}")
    assert code == 0
    text = out.decode()
    assert "(empty store)" in text and "registrations   0" in text
    # with APTPL the state fits v1 (a SUSE peer can read it)
    exec_json(capsysbinary, image, N1, *pr_out(REGISTER, sa_key=0xABC123, flags=APTPL))
    exec_json(capsysbinary, image, N1, *pr_out(RESERVE, key=0xABC123, pr_type=5))
    code, out, _ = run(capsysbinary, "pr", "show", "--store", f"file:{image}")
    text = out.decode()
    assert "format version  v1" in text
    assert "Write Exclusive, Registrants Only" in text
    assert f"* 0x0000000000abc123      -  no         {N1}" in text


def test_show_lists_v2_fields_and_unit_attentions(image: Path, capsysbinary) -> None:
    from tcmu_pr.pr.state import UnitAttention

    n1, n2 = Nexus.parse(N1), Nexus.parse(N2)
    state = PRState(
        seq=4,
        generation=2,
        registrations=(Registration(0xA, n1, rtpi=3, all_tg_pt=True),),
        aptpl=True,
        unit_attentions=(UnitAttention(n2, 0x2A, 0x05),),
    )
    sidecar_path(image).write_bytes(codec.encode(state))
    code, out, _ = run(capsysbinary, "pr", "show", "--store", f"file:{image}")
    text = out.decode()
    assert code == 0 and "format version  v2" in text
    assert f"  0x000000000000000a      3  yes        {N1}" in text
    assert f"REGISTRATIONS PREEMPTED for {N2}" in text


def test_show_malformed_store_exits_2(image: Path, capsysbinary) -> None:
    sidecar_path(image).write_bytes(b"0x00000009\n\0")
    code, _, err = run(capsysbinary, "pr", "show", "--store", f"file:{image}")
    assert code == 2 and "line 1" in err


# -- registry, demo, bench ------------------------------------------------------------------


def test_registry_accepts_new_commands_and_refuses_duplicates(monkeypatch, capsysbinary) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    seen: list[argparse.Namespace] = []

    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=1)

    @cli.command("bench", "nothing", help="test only", configure=configure)
    def _run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    assert cli.main(["bench", "nothing", "--n", "3"]) == 7
    assert seen[0].n == 3
    with pytest.raises(ValueError, match="twice"):
        cli.command("bench", "nothing", help="again")(_run)


def test_a_broken_command_module_does_not_break_the_rest(monkeypatch, capsysbinary) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "tcmu_pr.no_such_module"])
    with pytest.raises(SystemExit) as info:
        cli.main(["pr", "--help"])
    out, err = capsysbinary.readouterr()
    assert info.value.code == 0 and b"decode" in out
    assert "tcmu_pr.no_such_module unavailable" in err.decode()


def test_demo_runs_the_scenario(capsysbinary) -> None:
    code, out, err = run(capsysbinary, "demo")
    text = out.decode()
    assert code == 0, text + err
    assert "UNEXPECTED" not in text
    assert "RESERVATION CONFLICT  [ok]" in text
    assert "REGISTRATIONS PREEMPTED for iqn.1994-05.com.redhat:node1" in text
    assert text.rstrip().endswith("scenario behaved as SPC-4 says")


def test_bench_store_small_run(tmp_path: Path, capsysbinary) -> None:
    code, out, _ = run(capsysbinary, "bench", "store", "--procs", "2", "--updates", "10",
                       "--dir", str(tmp_path))  # fmt: skip
    text = out.decode()
    assert code == 0
    assert "guarded run lost nothing" in text
    assert "updates/s" in text and "p99" in text


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "tcmu-pr"
    res = subprocess.run([exe, "pr", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for sub in ("decode", "encode", "exec", "show"):
        assert sub in res.stdout
