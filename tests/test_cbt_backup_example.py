"""examples/cbt-backup/incremental-backup: a full backup, then incrementals that copy only
the changed blocks, restored into a file whose checksum equals the image's at the last
backup; a writer keeps writing during each backup (the snapshot is what is copied)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.cbt import mapfile, snapshot
from tcmu_pr.cbt.mapfile import CbtMap

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "cbt-backup" / "incremental-backup"
SIZE = 4 << 20
TRACK = 65536


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _backup(image: Path, dest: Path) -> dict:
    env = os.environ | {"TCMU_PR": f"{sys.executable} -m tcmu_pr"}
    argv = [sys.executable, str(SCRIPT), "backup", "--store", f"file:{image}", "--dest", str(dest)]
    out = subprocess.run(argv, check=True, capture_output=True, env=env)
    return json.loads(out.stdout)


def test_incremental_backup_restores_to_the_same_checksum(tmp_path):
    image = tmp_path / "lu.img"
    image.write_bytes(os.urandom(SIZE))
    mapfile.enable(str(image))
    dest = tmp_path / "backup"
    rnd = random.Random(5)
    m = CbtMap.open(str(image))
    data = FileDataBackend(str(image), cbt=m)
    try:
        first = _backup(image, dest)
        assert first["full"] and first["copied_bytes"] == SIZE
        for round_ in range(3):
            touched = {rnd.randrange(SIZE // TRACK) for _ in range(5)}
            for block in touched:
                data.write(block * TRACK + rnd.randrange(TRACK - 100), os.urandom(100))
            expected = _sha(image.read_bytes())  # the image as this backup must capture it
            # a writer runs during the backup, from its snapshot on
            stop = threading.Event()

            def writer(stop: threading.Event = stop) -> None:
                while not snapshot.numbers(str(image)) and not stop.is_set():
                    time.sleep(0.001)  # from the snapshot on: what it must not capture
                while not stop.is_set():  # in the first 4 blocks only: the rest stays put
                    data.write(rnd.randrange(4 * TRACK - 10), b"later!")

            t = threading.Thread(target=writer)
            t.start()
            try:
                inc = _backup(image, dest)
            finally:
                stop.set()
                t.join()
            assert not inc["full"] and inc["backup"] == round_ + 1
            # only changed blocks: this round's, plus what the last round's writer did
            assert 0 < inc["copied_bytes"] < SIZE
            restored = tmp_path / f"restored-{round_}.img"
            subprocess.run([sys.executable, str(SCRIPT), "restore", "--dest", str(dest),
                            "--to", str(restored)], check=True)  # fmt: skip
            assert _sha(restored.read_bytes()) == expected
    finally:
        data.close()
        m.close()
