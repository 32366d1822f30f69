"""StoreSpec: the one parser of store names (dev_config, CLI, layout and topology files)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError

GOOD = [
    ("file:/srv/lu0.img", StoreSpec("file", path="/srv/lu0.img")),
    ("file//srv/lu0.img", StoreSpec("file", path="/srv/lu0.img")),  # dev_config spelling
    ("file:/srv//a/../lu0.img", StoreSpec("file", path="/srv/lu0.img")),  # normalised
    ("rbd:rbd/disk1", StoreSpec("rbd", pool="rbd", image="disk1")),
    ("rbd/rbd/disk1", StoreSpec("rbd", pool="rbd", image="disk1")),
    ("rbd:my-pool/img.v2", StoreSpec("rbd", pool="my-pool", image="img.v2")),
]
BAD = ["", "file", "file:", "file/", "nfs:/x", "/plain/path", ":x", "rbd:pool", "rbd:/img",
       "rbd:pool/", "rbd:pool/img/extra", "rbd:pool/img@snap", "rbd:po ol/img",
       "file:/dir/", "file:/a\0b", "rbd:pool/img;x=1", "file:relative.img"]  # fmt: skip


@pytest.mark.parametrize(("text", "spec"), GOOD)
def test_good_spellings(text: str, spec: StoreSpec) -> None:
    assert StoreSpec.parse(text) == spec


@pytest.mark.parametrize("text", BAD)
def test_bad_spellings_name_what_was_expected(text: str) -> None:
    with pytest.raises(StoreSpecError, match="store"):
        StoreSpec.parse(text)


def test_relative_file_paths_need_a_base() -> None:
    """The one rule for relative paths: refused, unless the caller says where they start."""
    with pytest.raises(StoreSpecError, match="absolute"):
        StoreSpec.parse("file:lu0.img")
    assert StoreSpec.parse("file:lu0.img", base="/srv") == StoreSpec.file("/srv/lu0.img")
    assert StoreSpec.parse("file:../x/lu0.img", base="/srv/a") == StoreSpec.file("/srv/x/lu0.img")
    assert StoreSpec.parse("file:/abs.img", base="/srv") == StoreSpec.file("/abs.img")


def test_spellings_and_properties() -> None:
    f = StoreSpec.parse("file:/srv/lu0.img")
    assert (str(f), f.slashed, f.is_file, f.path) == (
        "file:/srv/lu0.img", "file//srv/lu0.img", True, "/srv/lu0.img")  # fmt: skip
    r = StoreSpec.parse("rbd/rbd/disk1")
    assert (str(r), r.slashed, r.is_file, r.path) == ("rbd:rbd/disk1", "rbd/rbd/disk1", False, "")


def test_values_are_checked_however_built() -> None:
    with pytest.raises(StoreSpecError):
        StoreSpec("file", path="relative")
    with pytest.raises(StoreSpecError):
        StoreSpec("rbd", pool="p")
    with pytest.raises(StoreSpecError):
        StoreSpec("nfs", path="/x")  # type: ignore[arg-type]


_name = st.text(st.characters(min_codepoint=33, max_codepoint=126,
                              blacklist_characters="/@;"), min_size=1, max_size=12)  # fmt: skip


@given(st.one_of(
    st.builds(lambda parts: StoreSpec.file("/" + "/".join(parts)), st.lists(_name, min_size=1,
              max_size=4).filter(lambda p: all(x not in (".", "..") for x in p))),
    st.builds(lambda p, i: StoreSpec("rbd", pool=p, image=i), _name, _name),
))  # fmt: skip
def test_both_spellings_round_trip(spec: StoreSpec) -> None:
    assert StoreSpec.parse(str(spec)) == spec
    assert StoreSpec.parse(spec.slashed) == spec
