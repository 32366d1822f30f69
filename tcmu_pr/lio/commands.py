"""``tcmu-pr layout apply|destroy|show``: the CLI side of tcmu_pr.lio.

The only module of the package that imports :mod:`tcmu_pr.cli`: it maps the library's errors
to the CLI's (a bad spec is a usage error, exit 2; LIO or the topology file refusing is a
failure, exit 1) and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from tcmu_pr.cli import CommandFailed, UsageError, command
from tcmu_pr.lio import topology_file
from tcmu_pr.lio.plan import Plan, plan, resolve_mode, topology_rows
from tcmu_pr.lio.spec import MODES, LayoutError, Spec, load_spec, store_size


def _spec_from_file(name: str) -> Spec:
    try:
        with open(name) as f:
            obj = json.load(f)
    except OSError as err:
        raise UsageError(f"cannot open {name}: {err.strerror}") from err
    except ValueError as err:
        raise UsageError(f"{name}: not JSON: {err}") from err
    try:
        return load_spec(obj, base=os.getcwd())
    except LayoutError as err:
        raise UsageError(f"{name}: {err}") from err


def _lio():  # type: ignore[no-untyped-def]
    from tcmu_pr.lio.converge import LIOError, LIOLayout

    try:
        return LIOLayout(), LIOError
    except LIOError as err:
        raise CommandFailed(str(err)) from err


def _configure_apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.json", help="the layout spec (docs/layouts.md)")
    p.add_argument("--mode", choices=MODES, help="override the spec's mode (default auto: "
                   "one device per LU if the kernel has nexus handles)")


def _configure_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.json", help="the layout spec (docs/layouts.md)")


@command("layout", "apply", help="create or converge a LU's LIO layout",
         configure=_configure_apply)
def _layout_apply(args: argparse.Namespace) -> int:
    spec = _spec_from_file(args.spec)
    if args.mode:
        if args.mode == "nexus" and spec.backend != "tcmu-pr":
            raise UsageError(f"{args.spec}: mode nexus needs backend tcmu-pr")
        spec = dataclasses.replace(spec, mode=args.mode)
    try:
        size = store_size(spec)
    except LayoutError as err:
        raise UsageError(str(err)) from err
    lio, LIOError = _lio()
    try:
        probe = spec.mode == "auto" and spec.backend == "tcmu-pr"
        mode = resolve_mode(spec, probe and lio.kernel_has_nexus_handles())
        the_plan = plan(spec, mode)

        def placed(hba_of: dict[str, str]) -> None:
            if spec.backend == "tcmu-pr":
                topology_file.update(spec.topology, spec.lu, topology_rows(the_plan, hba_of))

        done = lio.apply(the_plan, size, placed)
    except (LIOError, topology_file.TopologyFileError) as err:
        raise CommandFailed(str(err)) from err
    for warning in done.warnings:
        print(f"tcmu-pr: warning: {warning}", file=sys.stderr)
    _print_exports(the_plan, done.hba_of)
    return 0


def _print_exports(the_plan: Plan, hba_of: dict[str, str]) -> None:
    for ex in the_plan.exports:
        where = f"{hba_of[ex.device]}/{ex.device}"
        if ex.nexus is not None:
            print(f"{where} rtpi={ex.port.rtpi} nexus={ex.nexus}")
        else:
            print(f"{where} lun={the_plan.spec.lun} target={ex.port.target} "
                  f"tpg={ex.port.tag} initiator={ex.initiator}")


@command("layout", "destroy", help="remove a LU's LIO layout", configure=_configure_spec)
def _layout_destroy(args: argparse.Namespace) -> int:
    spec = _spec_from_file(args.spec)
    lio, LIOError = _lio()
    try:
        for path in lio.destroy(spec):
            print(f"removed {path.split('/core/')[-1]}")
        if spec.backend == "tcmu-pr" and os.path.exists(spec.topology):
            topology_file.update(spec.topology, spec.lu, {})
    except (LIOError, topology_file.TopologyFileError) as err:
        raise CommandFailed(str(err)) from err
    return 0


def _configure_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default=topology_file.DEFAULT_TOPOLOGY, metavar="FILE")


@command("layout", "show", help="LIO objects and the topology file, as JSON",
         configure=_configure_show)
def _layout_show(args: argparse.Namespace) -> int:
    lio, LIOError = _lio()
    try:
        out = lio.show()
        out["topology"] = topology_file.read(args.topology).get("devices", {})
    except (LIOError, topology_file.TopologyFileError) as err:
        raise CommandFailed(str(err)) from err
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0
