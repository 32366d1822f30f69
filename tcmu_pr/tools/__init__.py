"""User-facing ``tcmu-pr`` subcommands that are not the gateway itself: the demo and the benchmarks.

Each module registers its subcommand with :func:`tcmu_pr.cli.command` when the CLI imports it;
nothing in the library imports these.
"""
