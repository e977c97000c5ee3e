r"""Speed figures of the LSA trainer, each a ratio measured within one run.

    python scripts/benchmark.py [--out=results/benchmark.json] [--figures=throughput,cost,theorem,sweep]
    icl-benchmark ...   (the same, as a console script)

1. throughput_ratio_vs_reference: training prompts/s of `trainer.fit` with the
   default ('auto': Wishart) sampler against `Reference`, a straightforward
   implementation (below) of the same job: d = 10, n = 10, batch 2048, Adam.
   Both are timed warm: the reference after 10 untimed steps, the trainer after
   an untimed short fit (the first steps of a process's first program ran 1.5x
   slower here, on either side).
2. cost_ratio_n1000_vs_n10: seconds per training step at n = 1000 over n = 10.
3. time_to_theorem_seconds: wall seconds of a whole `python -m icl_theory.main`
   process (imports and compilation included) with the default config, and
   whether it ends with gamma_rel_error <= 0.01.
4. sweep_overhead_ratio: wall seconds of the default 60-run sweep over 60 times
   the steady-state training seconds of one of its runs; and
   sweep_speedup_vs_sequential: 60 single-run commands (timed on a few of them)
   over the sweep.

Absolute times on shared machines are noisy; the ratios compare two things
measured seconds to minutes apart on the same machine (figure 1: alternating, medians).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from icl_theory.engine import files, sweep as grid, trainer
from icl_theory.configs import lsa as lsa_config
from icl_theory.configs import sweep as sweep_config
from icl_theory.regression import experiment as lsa_regression
from icl_theory import cli as command_line

FIGURES = ("throughput", "cost", "theorem", "sweep")
GOALS = {"throughput_ratio_vs_reference": (">=", 10.0), "cost_ratio_n1000_vs_n10": ("<=", 1.5),
         "time_to_theorem_seconds": ("<=", 15.0), "sweep_overhead_ratio": ("<=", 1.2)}

# The job of figures 1 and 2.
JOB = dict(d=10, n=10, batch_size=2048, optimizer="adam", learning_rate=1e-3)


@dataclasses.dataclass(frozen=True)
class Reference:
  """LSA training written the way public research code does it; kept as the yardstick.

  A per-prompt sampler vmapped over the batch that materialises the (B, n+1, d+1)
  tokens from default Threefry normal draws; the layer as the full einsum over
  S = (1/n) Z^T M Z; `jax.jit` on one step; a Python loop over steps that reads
  the loss back every step. Nothing in it is slowed on purpose.
  """
  d: int = 10
  n: int = 10
  batch_size: int = 2048
  learning_rate: float = 1e-3

  def sample_prompt(self, key):
    k_w, k_x = jax.random.split(key)
    w = jax.random.normal(k_w, (self.d,))
    x = jax.random.normal(k_x, (self.n + 1, self.d))
    y = x @ w
    tokens = jnp.concatenate([x, y[:, None]], axis=1).at[self.n, self.d].set(0.0)
    return tokens, y[self.n]

  def loss(self, params, tokens, y_query):
    mask = jnp.ones(self.n + 1).at[self.n].set(0.0)
    s = jnp.einsum("bti,t,btj->bij", tokens, mask, tokens) / self.n
    out = tokens + jnp.einsum("ij,bjk,kl,btl->bti", params["W_PV"], s, params["W_KQ"], tokens)
    return jnp.mean((out[:, self.n, self.d] - y_query) ** 2)

  def prompts_per_second(self, steps: int, warmup: int = 10) -> float:
    dim = self.d + 1
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"W_PV": 0.02 * jax.random.normal(k1, (dim, dim)), "W_KQ": 0.02 * jax.random.normal(k2, (dim, dim))}
    optimizer = optax.adam(self.learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
      tokens, y_query = jax.vmap(self.sample_prompt)(jax.random.split(key, self.batch_size))
      loss, grads = jax.value_and_grad(self.loss)(params, tokens, y_query)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.PRNGKey(1)
    for i in range(warmup + steps):
      if i == warmup:
        start = time.perf_counter()
      params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i))
      float(loss)  # the host sync of a loop that logs every step
    return steps * self.batch_size / (time.perf_counter() - start)


def _job_config(**fields) -> ml_collections.ConfigDict:
  config = lsa_config.get_config()
  config.update(**{**JOB, "steps": 500, "warmup_steps": 10, **fields})
  return config


def trainer_step_seconds(config: ml_collections.ConfigDict, fused: bool = True) -> float:
  """Steady-state seconds per step of `trainer.fit` on `config` (compilation excluded).

  Data-parallel over this process's devices, as `icl_theory.main` trains (one CPU
  device for an LSA run: `icl_theory.experiments.use_cpu_cores`).
  """
  task = lsa_regression.validate_config(config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  settings = trainer.LoopSettings(steps=config.steps, log_every=config.steps // 2, checkpoint_every=0)
  result = trainer.fit(lsa_regression.make_objective(task, config, fused), optimizer, schedule, settings, config.seed, task)
  return result.train_seconds / result.steps_this_process


def throughput(steps: int = 500, rounds: int = 3) -> dict[str, Any]:
  """Figure 1: `rounds` alternating timings of the trainer and the reference, the median of each.

  A step of the trainer is short and its timing swings between back-to-back
  measurements on a shared machine; alternating the two sides and taking
  medians keeps one slow stretch from deciding the ratio.
  """
  config = _job_config(steps=steps)
  reference_job = Reference(d=config.d, n=config.n, batch_size=config.batch_size)
  trainer_step_seconds(_job_config(steps=steps // 5))  # untimed: a fresh process's first program runs slow
  ours, reference = [], []
  for _ in range(rounds):
    ours.append(config.batch_size / trainer_step_seconds(config))
    reference.append(reference_job.prompts_per_second(max(steps // 5, 50)))
  tokens = config.batch_size / trainer_step_seconds(_job_config(steps=steps // 5, sampler="tokens"))
  return {"throughput_ratio_vs_reference": float(np.median(ours) / np.median(reference)),
          "trainer_prompts_per_second": float(np.median(ours)),
          "reference_prompts_per_second": float(np.median(reference)),
          "trainer_prompts_per_second_rounds": ours, "reference_prompts_per_second_rounds": reference,
          "trainer_devices": jax.local_device_count(),
          "trainer_tokens_sampler_prompts_per_second": tokens, "job": dict(JOB)}


def cost(steps: int = 500) -> dict[str, Any]:
  """Figure 2, and the token sampler's ratio beside it."""
  short = trainer_step_seconds(_job_config(steps=steps, n=10))
  long = trainer_step_seconds(_job_config(steps=steps, n=1000))
  short_tokens = trainer_step_seconds(_job_config(steps=steps // 5, n=10, sampler="tokens"))
  long_tokens = trainer_step_seconds(_job_config(steps=max(steps // 25, 20), n=1000, sampler="tokens"))
  return {"cost_ratio_n1000_vs_n10": long / short, "seconds_per_step_n10": short, "seconds_per_step_n1000": long,
          "tokens_cost_ratio_n1000_vs_n10": long_tokens / short_tokens,
          "tokens_seconds_per_step_n10": short_tokens, "tokens_seconds_per_step_n1000": long_tokens}


def _timed_command(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False)
  elapsed = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
  return elapsed, done


def theorem(workdir: str) -> dict[str, Any]:
  """Figure 3: the default command, as a user runs it."""
  run_dir = os.path.join(workdir, "default_run")
  seconds, _ = _timed_command(["icl_theory.main", f"--workdir={run_dir}"])
  summary = files.read_json(os.path.join(run_dir, "summary.json"))
  return {"time_to_theorem_seconds": seconds, "gamma_rel_error": summary["gamma_rel_error"],
          "reached_theorem": summary["gamma_rel_error"] <= 0.01,
          "train_seconds": summary["train_seconds"], "compile_seconds": summary["compile_seconds"]}


def sweep(workdir: str, sequential_samples: int = 3) -> dict[str, Any]:
  """Figure 4: the default 60-run sweep against its runs one at a time."""
  config = sweep_config.get_config()
  runs = grid.expand_grid(lsa_regression.EXPERIMENT, config)
  sweep_dir = os.path.join(workdir, "sweep")
  sweep_seconds, _ = _timed_command(["icl_theory.sweep", f"--workdir={sweep_dir}"])
  # One run's steady-state training time: a run of the grid, compiled and warm.
  one = runs[len(runs) // 2].config(config.base)
  one.checkpoint_every = 0
  warm = one.copy_and_resolve_references()
  warm.steps = one.steps // 10
  trainer_step_seconds(warm, fused=False)  # untimed, as in figure 1: whichever figure runs first
  steady = trainer_step_seconds(one, fused=False) * one.steps  # the loss the sweep trains
  steady_fused = trainer_step_seconds(one) * one.steps        # ... and a single command's
  # Single-run commands, as a user without the sweep would run them; a few of them, spread over n.
  picks = np.linspace(0, len(runs) - 1, sequential_samples).round().astype(int)
  base = {k: config.base[k] for k in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_samples",
                                      "gamma_mc_samples")}
  command_seconds = []
  for i, index in enumerate(picks):
    run = runs[index]
    fields = run.coordinates()
    args = [f"--config.{k}={v}" for k, v in {**base, **fields}.items()]
    seconds, _ = _timed_command(["icl_theory.main", f"--workdir={os.path.join(workdir, f'single_{i}')}", *args])
    command_seconds.append(seconds)
  sequential = float(np.mean(command_seconds)) * len(runs)
  return {"sweep_overhead_ratio": sweep_seconds / (len(runs) * steady), "sweep_seconds": sweep_seconds,
          "num_runs": len(runs), "single_run_steady_train_seconds": steady,
          "single_run_fused_steady_train_seconds": steady_fused,
          "sweep_speedup_vs_sequential": sequential / sweep_seconds,
          "single_run_command_seconds": command_seconds, "sequential_seconds_estimate": sequential}


def machine() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind, "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "processor": platform.processor() or platform.machine()}


def run(figures: tuple[str, ...] = FIGURES, out: str | None = None) -> dict[str, Any]:
  """Measures `figures` and writes them with the machine and the goals to `out` (atomically)."""
  unknown = sorted(set(figures) - set(FIGURES))
  if unknown:
    raise ValueError(f"figures={','.join(unknown)!r} is not allowed: a comma-separated subset of {','.join(FIGURES)}")
  report: dict[str, Any] = {"machine": machine(), "goals": {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()}}
  with tempfile.TemporaryDirectory() as workdir:
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "throughput": throughput, "cost": cost,
        "theorem": functools.partial(theorem, workdir), "sweep": functools.partial(sweep, workdir)}
    for name in figures:
      logging.info("benchmark: measuring %s", name)
      report[name] = steps[name]()
      if out:  # a long benchmark keeps what it has measured
        files.write_json(out, report)
  report["met"] = {key: _met(report, key) for key in GOALS if any(key in report[f] for f in figures)}
  if out:
    files.write_json(out, report)
  return report


def _met(report: dict[str, Any], key: str) -> bool:
  value = next(report[f][key] for f in FIGURES if f in report and key in report[f])
  op, goal = GOALS[key]
  return bool(value >= goal if op == ">=" else value <= goal)


def format_report(report: dict[str, Any]) -> str:
  lines = [f"{'figure':34s}{'measured':>12s}{'goal':>10s}  met"]
  for key, (op, goal) in GOALS.items():
    for figure in FIGURES:
      if figure in report and key in report[figure]:
        lines.append(f"{key:34s}{report[figure][key]:12.3g}{op + ' ' + format(goal, 'g'):>10s}  "
                     f"{'yes' if report['met'][key] else 'NO'}")
  if "sweep" in report:
    lines.append(f"{'sweep_speedup_vs_sequential':34s}{report['sweep']['sweep_speedup_vs_sequential']:12.3g}")
  machine_ = report["machine"]
  lines.append(f"\n{machine_['platform']} ({machine_['device_kind']}), {machine_['cpu_count']} CPUs, jax {machine_['jax']}")
  return "\n".join(lines)


def cli() -> None:
  """Console script `icl-benchmark` and scripts/benchmark.py: flags --out and --figures."""
  from absl import flags  # the flags live only in this entry point

  out = flags.DEFINE_string("out", os.path.join("results", "benchmark.json"), "Where to write the JSON report.")
  chosen = flags.DEFINE_list("figures", list(FIGURES), f"Which figures to measure: a subset of {','.join(FIGURES)}.")

  def main(argv) -> None:
    if len(argv) > 1:
      command_line.fail(f"arguments={' '.join(argv[1:])!r} are not allowed: only --flags (see --helpshort)")
    try:
      report = run(tuple(chosen.value), out.value)
    except ValueError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    print(format_report(report))
    if out.value:
      print(f"\nwritten to {out.value}")

  command_line.run(main)
