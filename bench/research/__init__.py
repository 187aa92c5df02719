"""Model research: studies of what the model learns and how it ranks against its ablations.

Each study trains variants with the real trainer on generated data and writes
``bench/research/results/NAME.{json,md}`` (the serving benchmarks, in ``bench/``, write
``bench/results/``). ``bench.research.variants`` holds what the studies share.
"""
