"""What an experiment gives the engine: the one protocol between `icl_theory.engine` and an experiment package.

The engine trains, sweeps, evaluates and writes workdirs for any experiment; it
knows an experiment only through an `Experiment` object. An experiment package
(`icl_theory.regression`, `icl_theory.classification`, or a user's own) defines
one subclass and registers it by name in `icl_theory.experiments`, and its
configs name it (`config.experiment`).

A run config is a flat `ml_collections.ConfigDict` holding the training fields
that `engine.trainer.validate_training_fields` checks (optimizer, steps, seed,
batch size, ...) beside the experiment's own. A sweep config holds `base` (a run
config) and tuples of values for the axes the experiment declares.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections

from icl_theory.engine import trainer

Config = ml_collections.ConfigDict
Task = Any    # a pytree of arrays: runs that differ only in its values share compiled programs
Params = Any


class Experiment:
  """One experiment. Subclasses set the class attributes and override the methods that raise."""

  name: str = ""
  # The figure a single run draws into its workdir (`plot_run`), and any other files it writes there.
  run_figure: str = "run.png"
  # Fields that change only bookkeeping, never a number the run produces.
  bookkeeping_fields: tuple[str, ...] = ("log_every", "checkpoint_every", "keep_checkpoints")
  # Fields that change only the evaluation: a rerun with new values re-evaluates the trained model.
  evaluation_fields: tuple[str, ...] = ()
  # Sweep axes: a sweep config's `<field>_values` tuple -> the run config field it sets. Training axes
  # make new runs; evaluation axes evaluate every trained run at each value, without retraining.
  training_axes: dict[str, str] = {}
  evaluation_axes: dict[str, str] = {}
  # Training fields whose values enter the task's arrays only: runs differing only in them (and the
  # seed) share one compiled program. Every other field, when it differs, starts a new group.
  array_fields: tuple[str, ...] = ()
  # results.csv's metric columns, after the grid coordinates.
  metrics: tuple[str, ...] = ()
  # Whether one run on the CPU gains from splitting each step's batch over one device per core
  # (`splits_over_cpu_cores` may decide it per config instead).
  cpu_data_parallel: bool = False

  # --- config -> task -------------------------------------------------------------------------------
  def defaults(self) -> dict[str, Any]:
    """A run config's default fields: a workdir written before a field existed holds it at this value."""
    return {}

  def validate(self, config: Config) -> Task:
    """Checks every field of a run config (ConfigError naming the field) and returns its task."""
    raise NotImplementedError

  def build_task(self, config: Config) -> Task:
    """The run's task from an already validated config (cheap: no checks)."""
    return self.validate(config)

  def describe(self, config: Config, task: Task) -> str:
    """One line for the log: what is trained, on what."""
    return f"{self.name} run"

  # --- task -> objective ------------------------------------------------------------------------------
  def objective(self, task: Task, config: Config, num_runs: int) -> trainer.Objective:
    """What to train for a group of `num_runs` runs of `task`'s shapes (a fast path may depend on it)."""
    raise NotImplementedError

  def cost(self, config: Config) -> float:
    """A rough relative cost of training one run (a sweep's processes share groups by it)."""
    return 1.0

  def splits_over_cpu_cores(self, config: Config) -> bool:
    """Whether a single run of `config` on the CPU trains faster with its batch split over a device per core.

    Asked before JAX starts (the device count is fixed then), so it must not touch JAX,
    and before the config is validated: a bad field may raise, and then counts as no.
    """
    return self.cpu_data_parallel

  def reference(self, task: Task, config: Config) -> tuple[str, float] | None:
    """(name, loss) printed beside a single run's training loss (e.g. ('R*', the optimal risk)), or None."""
    return None

  # --- params -> metrics ------------------------------------------------------------------------------
  def compile_evaluation(self, param_shapes: Params, tasks: Task, configs: Sequence[Config],
                         devices: Sequence[jax.Device]) -> Any:
    """Optionally compiles `evaluate`'s programs ahead of the parameters (a sweep does it on another
    thread while the previous group trains); whatever it returns is passed to `evaluate`."""
    return None

  def evaluate(self, params: Params, tasks: Task, configs: Sequence[Config], keys: jax.Array,
               compiled: Any = None) -> list[dict[str, Any]]:
    """The metrics of R trained runs (leading run axis on `params`, `tasks`, `keys`), one dict per run.

    `configs[r]` is run r's config with any evaluation-axis values set; `keys[r]`
    its evaluation key (`engine.group.eval_key(seed)`). A single run's summary.json
    and a sweep's row of the same run are both this dict.
    """
    raise NotImplementedError

  def evaluate_points(self, params: Params, tasks: Task, configs_by_point: Sequence[Sequence[Config]],
                      keys: jax.Array, compiled: Any = None) -> list[list[dict[str, Any]]]:
    """`evaluate` at several evaluation points ([point][run] configs -> [point][run] dicts).

    The default calls `evaluate` once per point (`compiled` serves the first); an
    experiment overrides it where points share work (a figure that does not depend
    on the point's field).
    """
    return [self.evaluate(params, tasks, configs, keys, compiled if i == 0 else None)
            for i, configs in enumerate(configs_by_point)]

  def details(self, params: Params, task: Task, config: Config, key: jax.Array) -> dict[str, Any]:
    """Extra figures of a single run's summary.json (tables over test settings, ...); none by default."""
    return {}

  def summary_header(self, task: Task, config: Config) -> dict[str, Any]:
    """Fields of summary.json that describe the run's setting, written before its metrics."""
    return {}

  # --- results -> console, figures -------------------------------------------------------------------
  def format_summary(self, summary: dict[str, Any]) -> str:
    """The console table of a single run's summary.json dict."""
    raise NotImplementedError

  def format_sweep(self, rows: Sequence[dict[str, Any]]) -> str:
    """A few console lines about a finished sweep's rows."""
    finished = [r for r in rows if r.get("status") == "finished"]
    return f"{len(finished)}/{len(rows)} rows finished"

  def plot_run(self, summary: dict[str, Any], history: Sequence[dict], path: str) -> None:
    """Draws a single run's figure at `path`."""

  def plot_sweep(self, rows: Sequence[dict[str, Any]], directory: str) -> None:
    """Draws a sweep's figures into `directory`."""

  def group_name(self, config: Config, varying: Sequence[str]) -> str:
    """The folder name of the group of runs that share `config`'s programs; `varying`: the
    program-changing run fields that differ across the sweep."""
    parts = [f"{field}{config[field]}" for field in varying]
    name = "-".join(parts) or "all"
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
