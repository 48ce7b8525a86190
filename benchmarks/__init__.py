"""Benchmarks: ``make bench`` / ``cxledger bench`` / ``python -m benchmarks`` measure every
stage of the pipeline beside its limit in one run and print one JSON document
(``benchmarks.harness``); results accumulate in ``benchmarks/results/``."""
