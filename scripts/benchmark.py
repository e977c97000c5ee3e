r"""Speed of the LSA trainer against a straightforward implementation, and of the sweep.

    python scripts/benchmark.py [--out=results/benchmark.json] [--figures=throughput,cost,theorem,sweep]

The measurements are in `icl_theory.regression.benchmark` (also the console script `icl-benchmark`).
"""

from icl_theory.regression import benchmark

if __name__ == "__main__":
  benchmark.cli()
