"""Only the native parts live here; the metadata is in pyproject.toml.

Each cffi build script is one line of ``CFFI_MODULES`` ("path:builder variable").
"""

from setuptools import setup

CFFI_MODULES = [
    "native/build_ring.py:ffibuilder",
    "native/build_rbd_io.py:ffibuilder",
    "native/build_ublk.py:ffibuilder",
]

setup(cffi_modules=CFFI_MODULES)
