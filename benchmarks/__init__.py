"""Every benchmark of the project: scripts (`python -m benchmarks.<name>`) and their results.

A new benchmark goes here, with its result in `results/` and a row in README.md (machine,
date, baseline measured in the same run, command). Benchmarks may import any room below the
entry point (contract, model_builder, service, loadtest, testdoubles); nothing imports them
but the CLI's `bench` subcommand.
"""
