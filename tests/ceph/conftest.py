"""One throw-away Ceph cluster (scripts/ceph-cluster) for the whole test session.

Missing Ceph packages FAIL these tests instead of skipping them: CI must run them for real
(scripts/setup installs what scripts/apt-packages.txt lists).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "ceph-cluster"
IMAGE_SIZE = 64 << 20


def _require_ceph() -> None:
    missing = [t for t in ("ceph-mon", "ceph-osd", "ceph", "rados") if not shutil.which(t)]
    for mod in ("rados", "rbd"):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(f"python3-{mod}")
    if missing:
        pytest.fail(
            f"Ceph is not installed ({', '.join(missing)} missing): run scripts/setup",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def ceph_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Path of the running cluster's ceph.conf; also exported as $CEPH_CONF."""
    _require_ceph()
    # Kept by pytest's temp-dir rotation, so the daemons' logs can be read after a failure.
    directory = tmp_path_factory.mktemp("ceph")
    # The daemons' admin sockets live in it and must fit sun_path (108 bytes).
    assert len(str(directory / "run" / "osd.0.asok")) < 100, directory
    started = subprocess.run(
        [str(CLUSTER), "start", str(directory)], capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        subprocess.run([str(CLUSTER), "stop", str(directory)], capture_output=True, timeout=60)
        pytest.fail(f"ceph-cluster start failed:\n{started.stdout}\n{started.stderr}")
    conf = str(directory / "ceph.conf")
    assert f"CEPH_CONF={conf}" in started.stdout
    old = os.environ.get("CEPH_CONF")
    os.environ["CEPH_CONF"] = conf
    try:
        yield conf
    finally:
        if old is None:
            os.environ.pop("CEPH_CONF", None)
        else:
            os.environ["CEPH_CONF"] = old
        subprocess.run([str(CLUSTER), "stop", str(directory)], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rados_ioctx(ceph_conf: str) -> Iterator[Any]:
    """A python-rados ioctx on pool rbd (Debian's binding: the independent cross-check)."""
    import rados

    cluster = rados.Rados(conffile=ceph_conf)
    cluster.connect(timeout=30)
    ioctx = cluster.open_ioctx("rbd")
    yield ioctx
    ioctx.close()
    cluster.shutdown()


@pytest.fixture
def rbd_image(rados_ioctx: Any) -> Iterator[str]:
    """A fresh image in pool rbd, removed afterwards; yields its name."""
    import rbd

    name = f"t-{uuid.uuid4().hex[:12]}"
    rbd.RBD().create(rados_ioctx, name, IMAGE_SIZE)
    yield name
    # A client killed by a test keeps its watch until osd_client_watch_timeout (10 s here).
    deadline = time.monotonic() + 30
    while True:
        try:
            rbd.RBD().remove(rados_ioctx, name)
            return
        except rbd.ImageBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def header_oid(rados_ioctx: Any, rbd_image: str) -> str:
    import rbd

    with rbd.Image(rados_ioctx, rbd_image, read_only=True) as image:
        return f"rbd_header.{image.id()}"


@pytest.fixture(scope="session")
def rbd_io_native(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tcmu_pr._rbd_io, built from native/ into a temp dir unless the package already has it."""
    try:
        return importlib.import_module("tcmu_pr._rbd_io")
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT / "native"))
    try:
        import build_rbd_io
    finally:
        sys.path.pop(0)
    built = Path(build_rbd_io.build(tmp_path_factory.mktemp("rbd_io")))
    spec = importlib.util.spec_from_file_location("tcmu_pr._rbd_io", built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["tcmu_pr._rbd_io"] = module
    return module


def rbd_store(conf: str, image: str, **options: Any) -> Any:
    """An RbdStore on pool rbd (one RADOS client, as one gateway has)."""
    from tcmu_pr.backends.base import StoreOptions
    from tcmu_pr.backends.rbd_store import RbdStore
    from tcmu_pr.backends.store_spec import StoreSpec

    return RbdStore(StoreSpec("rbd", pool="rbd", image=image),
                    StoreOptions(ceph_conf=conf, **options))  # fmt: skip
