r"""Speed of the LSA trainer as a user feels it: whole commands, and ratios measured within one run.

    python scripts/benchmark.py [--out=results/benchmark.json] [--figures=job,...] [--sweep_rounds=5] [--resume]
    python scripts/benchmark.py --join=PART1.json,PART2.json --out=REPORT.json
    icl-benchmark ...   (the same, as a console script)

Every figure is measured in alternating rounds (A B A B ..., `ROUNDS` = 5 of them,
the sweep's `--sweep_rounds`, default 5 too) by `alternating`: each value is the median
over the rounds, a ratio is taken within each round (its two sides measured seconds
apart) and its median reported, and every round's values are kept in the JSON
("rounds", "num_rounds"). One slow stretch of a shared machine then moves one
round, not a verdict.

Whole commands are `python -m icl_theory.main` processes, each in a fresh workdir,
timed from the outside (`_timed_command`). Each is given its own compile cache
(`ICL_THEORY_CACHE_DIR`): cold = a new, empty directory; warm = the directory a
cold run of the same command has just filled. Beside a process's wall time are
its parts (`process_parts`, from its summary.json): startup_exit (the process's
wall time minus summary's wall_seconds: imports, JAX's start, and what follows
the run's clock, the params, summary and figure written and the exit), compile,
train, eval (summary's compile_seconds, train_seconds, eval_seconds; warm,
compile_seconds is mostly loading from the cache) and rest (the rest of
wall_seconds: validation, the workdir, initialisation, logging).

1. job: the issue's job, `JOB_COMMAND` (d = n = 10, batch 2048, 3000 Adam steps,
   no checkpoints), cold and warm: each round a new empty cache for the cold run,
   then a warm run on it. job_cold_seconds, job_warm_seconds.
2. default_run: `python -m icl_theory.main` with no flags (the default LSA
   config), cold and warm as the job. default_run_cold_seconds, default_run_warm_seconds.
3. classify_run: `python -m icl_theory.main --config=classify`, warm: one cold run
   fills a cache (classify_run_cold_seconds, one run), then `ROUNDS` warm runs on it.
   classify_run_warm_seconds.
4. throughput_ratio_vs_reference: training prompts/s of `trainer.fit` with the
   default ('auto': Wishart) sampler against `Reference`, a straightforward
   implementation (below) of the same job: d = 10, n = 10, batch 2048, Adam.
   Both are timed warm: the reference after 10 untimed steps, the trainer after an
   untimed short fit (the first steps of a process's first program ran 1.5x slower
   here, on either side), each over about 2 s (2000 trainer steps, 200 of the
   reference's). Alternating rounds of the two.
5. cost_ratio_n1000_vs_n10: seconds per training step at n = 1000 over n = 10,
   alternating (and the token sampler's ratio in the same rounds).
6. time_to_theorem_seconds: one cold default command, as figure 2's, and whether
   it ends with gamma_rel_error <= 0.01.
7. sweep_overhead_ratio: wall seconds of the default 60-run sweep (cold cache) over
   60 times the steady-state training seconds of one of its runs, alternating, in
   `--sweep_rounds` rounds; sweep_overhead_ratio_warm, the same sweep run again on
   the cache the cold one filled (a rerun, or another sweep of the same shapes: other
   covariances, noise levels or seeds compile nothing); and sweep_speedup_vs_sequential:
   60 single-run commands (estimated from a few of them, cold, in the same rounds) over
   the cold sweep. The goal is judged on the cold ratio.

Figures 4, 5 and 7's steady training is timed inside this process, compilation
excluded; the whole-command figures include everything a user waits for.
`GOALS` are the issue's; absolute times on shared machines are noisy.
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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from icl_theory.engine import compile_cache, files, sweep as grid, trainer
from icl_theory.configs import lsa as lsa_config
from icl_theory.configs import sweep as sweep_config
from icl_theory.regression import experiment as lsa_regression
from icl_theory import cli as command_line

FIGURES = ("job", "default_run", "classify_run", "throughput", "cost", "theorem", "sweep")
GOALS = {"job_warm_seconds": ("<=", 6.0), "job_cold_seconds": ("<=", 10.0),
         "default_run_warm_seconds": ("<=", 4.0), "classify_run_warm_seconds": ("<=", 12.0),
         "throughput_ratio_vs_reference": (">=", 12.0), "cost_ratio_n1000_vs_n10": ("<=", 1.5),
         "time_to_theorem_seconds": ("<=", 15.0), "sweep_overhead_ratio": ("<=", 1.1)}
ROUNDS = 5          # alternating rounds of every figure but the sweep (its own: --sweep_rounds)
SWEEP_ROUNDS = 5    # the sweep's default (--sweep_rounds): a round takes about 70 s on 2 CPU cores
# The parts of a whole command's wall time (`process_parts`).
PARTS = ("startup_exit", "compile", "train", "eval", "rest")

# The job of figures 4 and 5 (in this process) ...
JOB = dict(d=10, n=10, batch_size=2048, optimizer="adam", learning_rate=1e-3)
# ... and of figure 1, as a command: --config.FIELD=VALUE.
JOB_COMMAND = dict(JOB, steps=3000, checkpoint_every=0)


def alternating(sides: Sequence[Callable[[], dict[str, float]]], rounds: int = ROUNDS,
                ratios: dict[str, Callable[[dict[str, float]], float]] | None = None) -> dict[str, Any]:
  """Measures `sides` in turn, A B A B ..., `rounds` times: the median of every value, and every round's.

  Each side returns named values (names unique across the sides). Each of `ratios`
  is computed within a round from that round's values, and its median reported.
  Returns {name: median, ..., "rounds": {name: [one value per round]}, "num_rounds"}.
  """
  if rounds < 1:
    raise ValueError(f"rounds={rounds} is not allowed: at least 1")
  kept: dict[str, list[float]] = {}
  for _ in range(rounds):
    values: dict[str, float] = {}
    for side in sides:
      measured = side()
      if set(measured) & set(values):
        raise ValueError(f"sides measure the same names twice: {sorted(set(measured) & set(values))}")
      values.update(measured)
    for name, ratio in (ratios or {}).items():
      values[name] = ratio(values)
    for name, value in values.items():
      kept.setdefault(name, []).append(float(value))
  return {**{name: float(np.median(values)) for name, values in kept.items()}, "rounds": kept, "num_rounds": rounds}


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

  Data-parallel over this process's devices: one on a CPU, where the reference runs too,
  so the ratios compare the two programs on the same device. (`icl_theory.main` splits the
  job's large steps over a CPU device per core, `icl_theory.experiments.use_cpu_cores`; the
  whole-command figures include that.)
  """
  task = lsa_regression.validate_config(config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  settings = trainer.LoopSettings(steps=config.steps, log_every=config.steps // 2, checkpoint_every=0)
  result = trainer.fit(lsa_regression.make_objective(task, config, fused), optimizer, schedule, settings, config.seed, task)
  return result.train_seconds / result.steps_this_process


@functools.cache
def _warm_up() -> None:
  """An untimed short fit, once per process: a fresh process's first program runs slow."""
  trainer_step_seconds(_job_config(steps=100))


def throughput(steps: int = 2000, rounds: int = ROUNDS) -> dict[str, Any]:
  """Figure 4: the trainer's and the reference's prompts/s, alternating.

  Each side is timed over about 2 s on 2 CPU cores (`steps` trainer steps, a tenth as many
  of the reference's 10x slower ones): a 500-step window, under half a second, read
  0.88-1.22 ms per trainer step where 2000 steps read 0.84-0.86 ms.
  """
  config = _job_config(steps=steps)
  reference_job = Reference(d=config.d, n=config.n, batch_size=config.batch_size)
  _warm_up()
  measured = alternating(
      [lambda: {"trainer_prompts_per_second": config.batch_size / trainer_step_seconds(config)},
       lambda: {"reference_prompts_per_second": reference_job.prompts_per_second(max(steps // 10, 50))}],
      rounds,
      ratios={"throughput_ratio_vs_reference":
              lambda r: r["trainer_prompts_per_second"] / r["reference_prompts_per_second"]})
  tokens = config.batch_size / trainer_step_seconds(_job_config(steps=steps // 20, sampler="tokens"))
  return {**measured, "trainer_devices": jax.local_device_count(),
          "trainer_tokens_sampler_prompts_per_second": tokens, "job": dict(JOB)}


def cost(steps: int = 500, rounds: int = ROUNDS) -> dict[str, Any]:
  """Figure 5: seconds per step at n = 1000 and n = 10, alternating; the token sampler's in the same rounds."""
  _warm_up()
  return alternating(
      [lambda: {"seconds_per_step_n1000": trainer_step_seconds(_job_config(steps=steps, n=1000))},
       lambda: {"seconds_per_step_n10": trainer_step_seconds(_job_config(steps=steps, n=10))},
       lambda: {"tokens_seconds_per_step_n1000": trainer_step_seconds(
           _job_config(steps=max(steps // 25, 20), n=1000, sampler="tokens"))},
       lambda: {"tokens_seconds_per_step_n10": trainer_step_seconds(
           _job_config(steps=steps // 5, n=10, sampler="tokens"))}],
      rounds,
      ratios={"cost_ratio_n1000_vs_n10": lambda r: r["seconds_per_step_n1000"] / r["seconds_per_step_n10"],
              "tokens_cost_ratio_n1000_vs_n10":
              lambda r: r["tokens_seconds_per_step_n1000"] / r["tokens_seconds_per_step_n10"]})


def _timed_command(args: list[str], cache_dir: str = "off") -> tuple[float, subprocess.CompletedProcess]:
  """Wall seconds of `python -m ARGS`, with `cache_dir` as its compile cache (a directory, or 'off')."""
  env = {**os.environ, compile_cache.ENV: cache_dir}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # JAX's own cache setting would win over ours
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False, env=env)
  elapsed = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
  return elapsed, done


def _new_dir(workdir: str, prefix: str) -> str:
  return tempfile.mkdtemp(prefix=f"{prefix}-", dir=workdir)


def _flags(fields: dict[str, Any]) -> list[str]:
  return [f"--config.{key}={value}" for key, value in fields.items()]


def process_parts(name: str, process_seconds: float, summary: dict[str, Any]) -> dict[str, float]:
  """A whole command's wall time and its `PARTS` (module docstring), named `{name}_seconds`, `{name}_{part}_seconds`."""
  wall = summary["wall_seconds"]
  measured = {part: summary[f"{part}_seconds"] for part in ("compile", "train", "eval")}
  parts = {"startup_exit": process_seconds - wall, **measured, "rest": wall - sum(measured.values())}
  return {f"{name}_seconds": process_seconds, **{f"{name}_{part}_seconds": parts[part] for part in PARTS}}


def _whole_command(name: str, args: list[str], cache_dir: str, workdir: str,
                   read: Sequence[str] = ()) -> dict[str, float]:
  """One `python -m icl_theory.main ARGS` in a fresh workdir: `process_parts`, and the summary's `read` fields."""
  run_dir = _new_dir(workdir, name)
  seconds, _ = _timed_command(["icl_theory.main", f"--workdir={run_dir}", *args], cache_dir)
  summary = files.read_json(os.path.join(run_dir, "summary.json"))
  return {**process_parts(name, seconds, summary), **{key: summary[key] for key in read}}


def _cold_and_warm(name: str, args: list[str], workdir: str, rounds: int) -> dict[str, Any]:
  """Rounds of a command cold (a new, empty cache), then warm (the cache that run filled)."""
  cache_dir = ""

  def cold() -> dict[str, float]:
    nonlocal cache_dir
    cache_dir = _new_dir(workdir, "cache")
    return _whole_command(f"{name}_cold", args, cache_dir, workdir)

  def warm() -> dict[str, float]:
    return _whole_command(f"{name}_warm", args, cache_dir, workdir)

  return {"command": ["python", "-m", "icl_theory.main", *args], **alternating([cold, warm], rounds)}


def job(workdir: str, rounds: int = ROUNDS, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Figure 1: the issue's job as a command, cold and warm. `overrides`: config fields (tests shrink the job)."""
  return _cold_and_warm("job", _flags({**JOB_COMMAND, **(overrides or {})}), workdir, rounds)


def default_run(workdir: str, rounds: int = ROUNDS, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Figure 2: `python -m icl_theory.main` with no flags, cold and warm."""
  return _cold_and_warm("default_run", _flags(overrides or {}), workdir, rounds)


def classify_run(workdir: str, rounds: int = ROUNDS, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Figure 3: `python -m icl_theory.main --config=classify`, warm: one cold run fills the cache, then `rounds`."""
  args = ["--config=classify", *_flags(overrides or {})]
  cache_dir = _new_dir(workdir, "cache")
  filling = _whole_command("classify_run_cold", args, cache_dir, workdir)
  warm = alternating([lambda: _whole_command("classify_run_warm", args, cache_dir, workdir)], rounds)
  return {"command": ["python", "-m", "icl_theory.main", *args], **filling, **warm}


def theorem(workdir: str) -> dict[str, Any]:
  """Figure 6: the default command, cold, as a user's first run; does it reach the theorem?"""
  measured = alternating([lambda: _whole_command("time_to_theorem", [], _new_dir(workdir, "cache"), workdir,
                                                 read=("gamma_rel_error",))], rounds=1)
  return {**measured, "reached_theorem": measured["gamma_rel_error"] <= 0.01}


def sweep(workdir: str, rounds: int = SWEEP_ROUNDS, sequential_samples: int = 3) -> dict[str, Any]:
  """Figure 7: the default 60-run sweep against one run's steady training, and against its runs one at a time."""
  config = sweep_config.get_config()
  runs = grid.expand_grid(lsa_regression.EXPERIMENT, config)
  # One run's steady-state training time: a run of the grid, compiled and warm.
  one = runs[len(runs) // 2].config(config.base)
  one.checkpoint_every = 0
  warm = one.copy_and_resolve_references()
  warm.steps = one.steps // 10
  trainer_step_seconds(warm)  # untimed, as in figure 4: whichever figure runs first
  # Single-run commands, as a user without the sweep would run them; a few of them, spread over n.
  picks = np.linspace(0, len(runs) - 1, sequential_samples).round().astype(int)
  base = {k: config.base[k] for k in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_samples",
                                      "gamma_mc_samples")}
  commands = [_flags({**base, **runs[index].coordinates()}) for index in picks]

  def sweep_commands() -> dict[str, float]:
    cache = _new_dir(workdir, "cache")
    command = lambda: _timed_command(["icl_theory.sweep", f"--workdir={_new_dir(workdir, 'sweep')}"], cache)[0]
    cold = command()  # on a new, empty cache
    return {"sweep_seconds": cold, "sweep_warm_seconds": command()}  # then on the cache the cold run filled

  def single_commands() -> dict[str, float]:
    seconds = [_timed_command(["icl_theory.main", f"--workdir={_new_dir(workdir, 'single')}", *args],
                              _new_dir(workdir, "cache"))[0] for args in commands]
    return {"single_run_command_mean_seconds": float(np.mean(seconds))}

  measured = alternating(
      [sweep_commands,
       # Steady training of the loss the sweep (and a single command) trains, the fused one; and of the einsum
       # path it replaced, for the record.
       lambda: {"single_run_steady_train_seconds": trainer_step_seconds(one) * one.steps},
       lambda: {"single_run_einsum_steady_train_seconds": trainer_step_seconds(one, fused=False) * one.steps},
       single_commands],
      rounds,
      ratios={"sweep_overhead_ratio": lambda r: r["sweep_seconds"] / (len(runs) * r["single_run_steady_train_seconds"]),
              "sweep_overhead_ratio_warm":
              lambda r: r["sweep_warm_seconds"] / (len(runs) * r["single_run_steady_train_seconds"]),
              "sweep_speedup_vs_sequential":
              lambda r: len(runs) * r["single_run_command_mean_seconds"] / r["sweep_seconds"]})
  return {**measured, "num_runs": len(runs),
          "cache": "cold: a new, empty compile cache for every command; warm (sweep_warm_seconds): the cache the "
                   "round's cold sweep filled",
          "sequential_commands": [["python", "-m", "icl_theory.main", *args] for args in commands]}


def _commit() -> str | None:
  """The checkout's git commit, where the package runs from one (else None): which code was measured."""
  try:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
  except OSError:  # no git
    return None
  if done.returncode != 0:  # not a checkout
    return None
  return done.stdout.strip() or None


# The fields of `machine()` that must agree for two reports to be one machine's (`join`).
SAME_MACHINE = ("platform", "device_kind", "num_devices", "cpu_count", "jax")


def machine() -> dict[str, Any]:
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind, "num_devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "processor": platform.processor() or platform.machine(), "commit": _commit()}


def judge(report: dict[str, Any]) -> dict[str, Any]:
  """`report` with "met": each goal whose figure it holds, met or not."""
  met = {key: _met(report, key) for key in GOALS if any(key in report[f] for f in FIGURES if f in report)}
  return {**{k: v for k, v in report.items() if k != "met"}, "met": met}


def join(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Reports of one machine, measured in parts (a run cut short by a time limit, then the rest), as one.

  A later report's figure replaces an earlier one's; "parts" records which figures
  each part measured, on which commit. Raises ValueError for reports of different
  machines (`SAME_MACHINE`).
  """
  if not reports:
    raise ValueError("join needs at least one report")
  first = reports[0]["machine"]
  for report in reports[1:]:
    differ = [k for k in SAME_MACHINE if report["machine"].get(k) != first.get(k)]
    if differ:
      raise ValueError(f"reports of different machines cannot be joined: they differ in {', '.join(differ)}")
  measured: dict[str, Any] = {}
  parts = []
  for report in reports:
    figures = [f for f in FIGURES if f in report]
    measured.update({f: report[f] for f in figures})
    parts.extend(report.get("parts") or [{"figures": figures, "commit": report["machine"].get("commit")}])
  joined = {"machine": reports[-1]["machine"], "goals": reports[-1]["goals"],
            **{f: measured[f] for f in FIGURES if f in measured}}
  if len(parts) > 1:
    joined["parts"] = parts
  return judge(joined)


def check_figures(figures: Sequence[str]) -> None:
  """Raises ValueError unless `figures` are names in FIGURES."""
  unknown = sorted(set(figures) - set(FIGURES))
  if unknown:
    raise ValueError(f"figures={','.join(unknown)!r} is not allowed: a comma-separated subset of {','.join(FIGURES)}")


def run(figures: Sequence[str] = FIGURES, out: str | None = None, sweep_rounds: int = SWEEP_ROUNDS,
        resume: bool = False) -> dict[str, Any]:
  """Measures `figures` (in FIGURES' order) and writes them with the machine and the goals to `out` (atomically).

  `resume`: the figures `out` already holds (a run of this machine cut short) are kept, not measured again.
  """
  check_figures(figures)
  if sweep_rounds < 1:
    raise ValueError(f"sweep_rounds={sweep_rounds} is not allowed: at least 1")
  fresh: dict[str, Any] = {"machine": machine(), "goals": {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()}}
  earlier = files.read_json(out) if resume and out and os.path.exists(out) else None

  def report() -> dict[str, Any]:  # what is measured so far, joined to the earlier part if any
    return join([earlier, fresh]) if earlier is not None else judge(fresh)

  report()  # an earlier part of another machine is refused here, before anything is measured
  with tempfile.TemporaryDirectory() as workdir:
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "job": functools.partial(job, workdir), "default_run": functools.partial(default_run, workdir),
        "classify_run": functools.partial(classify_run, workdir), "throughput": throughput, "cost": cost,
        "theorem": functools.partial(theorem, workdir), "sweep": functools.partial(sweep, workdir, sweep_rounds)}
    for name in (f for f in FIGURES if f in figures and f not in (earlier or {})):
      logging.info("benchmark: measuring %s", name)
      fresh[name] = steps[name]()
      if out:  # a long benchmark keeps what it has measured
        files.write_json(out, report())
  final = report()
  if out:
    files.write_json(out, final)
  return final


def _met(report: dict[str, Any], key: str) -> bool:
  value = next(report[f][key] for f in FIGURES if f in report and key in report[f])
  op, goal = GOALS[key]
  return bool(value >= goal if op == ">=" else value <= goal)


def _whole_commands(figure: dict[str, Any]) -> list[str]:
  """The names of a figure's whole-command times: those with every part beside them."""
  names = [key[:-len("_seconds")] for key in figure if key.endswith("_seconds")]
  return [name for name in names if all(f"{name}_{part}_seconds" in figure for part in PARTS)]


def format_report(report: dict[str, Any]) -> str:
  """Every figure's values with their goals and verdicts; under a whole command's time, its parts (medians)."""
  lines = [f"{'figure':34s}{'measured':>10s}{'goal':>9s}  {'met':4s}rounds"]

  def line(key: str, figure: dict[str, Any]) -> None:
    goal = f"{GOALS[key][0]} {GOALS[key][1]:g}" if key in GOALS else ""
    met = ("yes" if report["met"][key] else "NO") if key in report.get("met", {}) else ""
    rounds = figure.get("rounds", {}).get(key)
    spread = f"{len(rounds)}: {min(rounds):.3g}-{max(rounds):.3g}" if rounds and len(rounds) > 1 else ""
    lines.append(f"{key:34s}{figure[key]:10.3g}{goal:>9s}  {met:4s}{spread}")

  for name in FIGURES:
    if name not in report:
      continue
    figure = report[name]
    lines.append(f"{name} ({figure['num_rounds']} round{'s' if figure['num_rounds'] > 1 else ''})")
    commands = _whole_commands(figure)
    no_goal = [f"{command}_seconds" for command in commands if f"{command}_seconds" not in GOALS]
    for key in [key for key in GOALS if key in figure] + no_goal:
      line(key, figure)
      command = key[:-len("_seconds")]
      if command in commands:
        lines.append("    " + ", ".join(f"{part} {figure[f'{command}_{part}_seconds']:.2f}" for part in PARTS) + " s")
    for key in ("sweep_overhead_ratio_warm", "sweep_speedup_vs_sequential", "tokens_cost_ratio_n1000_vs_n10"):
      if key in figure:
        line(key, figure)
    if "reached_theorem" in figure:
      lines.append(f"    gamma_rel_error {figure['gamma_rel_error']:.3g} (reached: {figure['reached_theorem']})")
  met = report.get("met", {})
  lines.append(f"\ngoals met: {sum(met.values())} of {len(met)}"
               + (f" (not: {', '.join(k for k, v in met.items() if not v)})" if not all(met.values()) else ""))
  machine_ = report["machine"]
  lines.append(f"{machine_['platform']} ({machine_['device_kind']}), {machine_['cpu_count']} CPUs, "
               f"jax {machine_['jax']}")
  return "\n".join(lines)


def cli() -> None:
  """Console script `icl-benchmark` and scripts/benchmark.py: flags --out, --figures, --sweep_rounds, --resume, --join."""
  from absl import flags  # the flags live only in this entry point

  out = flags.DEFINE_string("out", os.path.join("results", "benchmark.json"), "Where to write the JSON report.")
  chosen = flags.DEFINE_list("figures", list(FIGURES), f"Which figures to measure: a subset of {','.join(FIGURES)}.")
  sweep_rounds = flags.DEFINE_integer("sweep_rounds", SWEEP_ROUNDS, "Alternating rounds of the sweep figure "
                                      f"(the others: {ROUNDS}); about 70 s each on 2 CPU cores.")
  resume = flags.DEFINE_bool("resume", False, "Keep the figures --out already holds (a run of this machine cut "
                             "short) and measure the others.")
  parts = flags.DEFINE_list("join", [], "Measure nothing: join these reports of one machine, measured in parts, "
                            "into --out (a later file's figure wins).")

  def main(argv) -> None:
    command_line.only_flags(argv)
    try:
      if parts.value:
        missing = [path for path in parts.value if not os.path.exists(path)]
        if missing:
          raise ValueError(f"join={','.join(parts.value)!r} is not allowed: {', '.join(missing)} does not exist")
        report = join([files.read_json(path) for path in parts.value])
        if out.value:
          files.write_json(out.value, report)
      else:
        report = run(tuple(chosen.value), out.value, sweep_rounds.value, resume.value)
    except ValueError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(2)
    print(format_report(report))
    if out.value:
      print(f"\nwritten to {out.value}")

  command_line.run(main)
