"""The device string the kernel sends and our dev_config grammar."""

from __future__ import annotations

import errno

import pytest

from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.netlink.devconfig import (
    DevConfig,
    DeviceStringError,
    parse_dev_config,
    split_uio_name,
)
from tcmu_pr.pr.nexus import Nexus

F = StoreSpec.parse

NEXUS = "iqn.1994-05.com.redhat:client1,i,0x23d000001,iqn.2003-01.org.linux-iscsi.gw:rbd,t,0x1"


def test_uio_name_with_and_without_config():
    assert split_uio_name("tcm-user/3/lu0/tcmu-pr/file:/srv/a b/img") == (
        3,
        "lu0",
        "tcmu-pr/file:/srv/a b/img",
    )
    assert split_uio_name("tcm-user/0/lu0") == (0, "lu0", "")


@pytest.mark.parametrize("text", ["uio/1/lu/x", "tcm-user/x/lu/c", "tcm-user/1", "tcm-user/1//c"])
def test_bad_uio_names(text):
    with pytest.raises(DeviceStringError) as info:
        split_uio_name(text)
    assert info.value.errno == errno.EINVAL


def test_plain_file_and_rbd_configs():
    assert parse_dev_config("tcmu-pr/file:/srv/lu0.img") == DevConfig(
        F("file:/srv/lu0.img"), F("file:/srv/lu0.img"), raw="tcmu-pr/file:/srv/lu0.img"
    )
    cfg = parse_dev_config("tcmu-pr/rbd:rbd/disk1")
    assert (cfg.store, cfg.pr_store) == (F("rbd:rbd/disk1"), F("rbd:rbd/disk1"))
    # targetcli spells the handler as D-Bus must: tcmu_pr.
    assert parse_dev_config("tcmu_pr/file:/srv/lu0.img").store == F("file:/srv/lu0.img")
    # rtslib-fb refuses ":" in a config: the slash spelling means the same stores.
    cfg = parse_dev_config("tcmu-pr/file//srv/lu0.img;pr_store=rbd/rbd/disk1")
    assert (cfg.store, cfg.pr_store) == (F("file:/srv/lu0.img"), F("rbd:rbd/disk1"))
    assert parse_dev_config("tcmu_pr/rbd/rbd/disk1").store == F("rbd:rbd/disk1")


def test_options():
    cfg = parse_dev_config(f"tcmu-pr/file:/srv/x;pr_store=rbd:p/i;nexus={NEXUS};rtpi=2")
    assert cfg.store == F("file:/srv/x")
    assert cfg.pr_store == F("rbd:p/i")
    assert cfg.nexus == Nexus.parse(NEXUS)
    assert cfg.rtpi == 2


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("", errno.EINVAL, "empty dev_config"),
        ("file//srv/x", errno.ENOENT, "not for handler"),
        ("tcmu-pr", errno.ENOENT, "not for handler"),
        ("tcmu-pr/srv/x", errno.EINVAL, "unknown store type"),
        ("tcmu-pr/file:srv/x", errno.EINVAL, "absolute"),
        ("tcmu-pr/file:/srv/", errno.EINVAL, "of an image file"),
        ("tcmu-pr/rbd:pool", errno.EINVAL, "rbd:POOL/IMAGE"),
        ("tcmu-pr/rbd:pool/img@snap", errno.EINVAL, "rbd:POOL/IMAGE"),
        ("tcmu-pr/nfs:/x", errno.EINVAL, "unknown store type"),
        ("tcmu-pr/file:/x;size", errno.EINVAL, "key=value"),
        ("tcmu-pr/file:/x;color=red", errno.EINVAL, "unknown option 'color'"),
        ("tcmu-pr/file:/x;rtpi=1;rtpi=2", errno.EINVAL, "given twice"),
        ("tcmu-pr/file:/x;rtpi=0", errno.EINVAL, "1..65535"),
        ("tcmu-pr/file:/x;nexus=host1", errno.EINVAL, "option nexus"),
        ("tcmu-pr/file:/" + "x" * 250, errno.EINVAL, "at most 255"),
    ],
)
def test_bad_configs_say_why(text, code, fragment):
    with pytest.raises(DeviceStringError) as info:
        parse_dev_config(text)
    assert info.value.errno == code
    assert fragment in str(info.value)
