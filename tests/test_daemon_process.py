"""The daemon as a process: SIGTERM/SIGINT stop it cleanly, bad configuration stops it early."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PYTHON = sys.executable


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(tmp_path, signum):
    child = subprocess.Popen(
        [PYTHON, str(HERE / "daemon_child.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signum)
        _, err = child.communicate(timeout=15)
    finally:
        child.kill() if child.poll() is None else None
    assert child.returncode == 0, err
    assert f"{signal.Signals(signum).name}: shutting down" in err
    assert "device 1 (user_1/lu0_a) closed" in err  # the device was closed, not abandoned
    assert "tcmu-pr daemon stopped" in err
    assert "Traceback" not in err


def test_bad_config_file_is_a_usage_error(tmp_path):
    conf = tmp_path / "tcmu-pr.conf"
    conf.write_text("[daemon]\nring = 'fast'\n")
    done = subprocess.run(
        [PYTHON, "-m", "tcmu_pr", "daemon", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "daemon.ring must be one of auto, native, python" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_without_the_kernel_family_exits_1(tmp_path):
    # This machine has no target_core_user (or no permission to bind it): exit 1, one reason.
    conf = tmp_path / "tcmu-pr.conf"
    conf.write_text("[dbus]\nenabled = false\n")
    done = subprocess.run(
        [PYTHON, "-m", "tcmu_pr", "daemon", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode == 0 or "ready" in done.stderr:
        pytest.skip("TCM-USER is available here")
    assert done.returncode == 1
    assert "TCM-USER" in done.stderr or "netlink" in done.stderr
