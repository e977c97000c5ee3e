r"""Speed of the LSA trainer against a straightforward implementation, and of the sweep.

    python scripts/benchmark.py [--out=results/benchmark.json]
        [--figures=job,default_run,classify_run,throughput,cost,theorem,sweep] [--sweep_rounds=5] [--resume]
    python scripts/benchmark.py --join=PART1.json,PART2.json --out=REPORT.json

--resume keeps the figures --out already holds (a run cut short) and measures the rest;
--join writes parts measured separately on one machine as one report, measuring nothing.

The measurements are in `icl_theory.regression.benchmark` (also the console script `icl-benchmark`):
whole-process times of the user's commands cold and warm (with their parts), the trainer's
throughput and cost ratios, each the median of five alternating rounds. Run it on an idle machine.
"""

from icl_theory.regression import benchmark

if __name__ == "__main__":
  benchmark.cli()
