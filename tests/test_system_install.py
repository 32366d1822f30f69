"""`tcmu-pr system install`: the units pass systemd-analyze verify, the D-Bus files are what
targetcli needs, nothing of someone else's is overwritten, and the step is repeatable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tcmu_pr import cli
from tcmu_pr.daemon import config
from tcmu_pr.system.install import FILES, MARK, install


def test_install_writes_every_file_and_the_config_once(tmp_path: Path) -> None:
    lines = install(tmp_path)
    for dest in [*FILES.values(), "etc/tcmu-pr/tcmu-pr.conf"]:
        assert (tmp_path / dest).is_file(), dest
    unit = (tmp_path / FILES["tcmu-pr.service"]).read_text()
    assert f"ExecStart={sys.executable} -m tcmu_pr daemon --config /etc/tcmu-pr/tcmu-pr.conf" \
        in unit
    assert "Type=notify" in unit and "Conflicts=tcmu-runner.service" in unit
    # The installed configuration is the documented one, and parses to the defaults.
    assert config.load(tmp_path / "etc/tcmu-pr/tcmu-pr.conf") == config.DaemonConfig()
    assert all(line.startswith("wrote") for line in lines)
    # Again: nothing changes; an administrator's edited config is kept.
    (tmp_path / "etc/tcmu-pr/tcmu-pr.conf").write_text("[daemon]\nlog_level = \"debug\"\n")
    again = install(tmp_path)
    assert all(line.startswith(("unchanged", "kept")) for line in again), again
    assert "debug" in (tmp_path / "etc/tcmu-pr/tcmu-pr.conf").read_text()


@pytest.mark.parametrize("unit", ["tcmu-pr.service", "tcmu-pr@gw1.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/setup installs systemd"
    install(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    template = "tcmu-pr@.service" if "@" in unit else unit
    shutil.copy(tmp_path / FILES[template], units / unit)  # a template checks as an instance
    done = subprocess.run([analyze, "verify", "--man=no", str(units / unit)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if unit in line or "tcmu" in line]  # fmt: skip
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_dbus_files_let_root_own_the_tcmu_service_name(tmp_path: Path) -> None:
    install(tmp_path)
    policy = ET.parse(tmp_path / FILES["dbus-policy.conf"]).getroot()
    root_policy = policy.find("policy[@user='root']")
    assert root_policy is not None
    assert root_policy.find("allow[@own='org.kernel.TCMUService1']") is not None
    activation = (tmp_path / FILES["org.kernel.TCMUService1.service"]).read_text()
    assert "Name=org.kernel.TCMUService1" in activation
    assert "SystemdService=tcmu-pr.service" in activation


def test_someone_elses_file_is_left_alone_unless_forced(tmp_path: Path, capsys) -> None:
    theirs = tmp_path / FILES["org.kernel.TCMUService1.service"]
    theirs.parent.mkdir(parents=True)
    theirs.write_text("[D-BUS Service]\nName=org.kernel.TCMUService1\nExec=/usr/bin/tcmu-runner\n")
    assert cli.main(["system", "install", "--root", str(tmp_path)]) == 2
    assert "not written by tcmu-pr" in capsys.readouterr().err
    assert "tcmu-runner" in theirs.read_text()
    assert not (tmp_path / FILES["tcmu-pr.service"]).exists()  # nothing half-installed
    assert cli.main(["system", "install", "--root", str(tmp_path), "--force"]) == 0
    assert MARK in theirs.read_text()
