"""A group: runs of one experiment that share compiled programs, trained and evaluated together.

The one code path of the engine. A single run is a group of one (`engine.run`);
a sweep is a sequence of groups (`engine.sweep`). Both call `Group.fit` and
`Group.evaluate`, so a sweep's row and the same run's summary.json come from the
same functions on the same keys.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import optax

from icl_theory.engine import precision, progress, trainer
from icl_theory.engine.experiment import Experiment

_EVAL_STREAM = 1_000_003


def eval_key(seed: int) -> jax.Array:
  """The key of a run's evaluation: a function of its seed alone, never of its group."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), _EVAL_STREAM)


def with_fields(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `values` set (an unlocked copy: the caller's config is untouched)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.update(values)
  return copy


def stack(trees: Sequence[Any]) -> Any:
  """Pytrees of the same structure, stacked along a new leading run axis (host arrays)."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


@dataclasses.dataclass
class Group:
  """R runs (`configs`) of `experiment` that differ only in array values and seeds.

  `data_parallel`: each step's batch is split over the devices (one run); else
  the runs are (a sweep). `devices`: this process's by default.
  """
  experiment: Experiment
  configs: list[ml_collections.ConfigDict]
  data_parallel: bool = False
  devices: Sequence[jax.Device] | None = None
  label: str = ""  # for progress lines: the group's name in a sweep
  tasks: Any = dataclasses.field(init=False)  # the runs' tasks, stacked along a run axis
  first_task: Any = dataclasses.field(init=False)  # the first run's, unstacked
  objective: trainer.Objective = dataclasses.field(init=False)
  optimizer: optax.GradientTransformation = dataclasses.field(init=False)
  lr_schedule: optax.Schedule = dataclasses.field(init=False)
  settings: trainer.LoopSettings = dataclasses.field(init=False)
  training: concurrent.futures.Future | None = dataclasses.field(default=None, init=False)
  evaluation: concurrent.futures.Future | None = dataclasses.field(default=None, init=False)

  def __post_init__(self):
    tasks = [self.experiment.build_task(config) for config in self.configs]
    self.tasks = stack(tasks)
    self.first_task = tasks[0]
    first = self.configs[0]
    self.objective = self.experiment.objective(self.first_task, first, len(self.configs))
    self.optimizer, self.lr_schedule = trainer.optimizer_from_config(first)
    self.settings = trainer.LoopSettings.from_config(first)

  @property
  def seeds(self) -> list[int]:
    return [int(config.seed) for config in self.configs]

  @property
  def eval_devices(self) -> list[jax.Device]:
    # Evaluation runs on one device: on forced host devices, linear algebra inside a Monte Carlo
    # scan (SVD, eigh) deadlocks the JAX CPU runtime when several devices run it at once.
    return (list(self.devices) if self.devices else jax.local_devices())[:1]

  def _what(self, action: str) -> str:
    return f"{action} ({self.label})" if self.label else action

  def _compile_training(self) -> trainer.GroupPrograms:
    with progress.timed(self._what("compiling the training programs")):
      return precision.scoped(trainer.compile_group)(self.objective, self.optimizer, self.settings,
                                                     len(self.configs), self.tasks, self.devices, self.data_parallel)

  def _compile_evaluation(self, configs: Sequence[ml_collections.ConfigDict]) -> Any:
    param_shapes = jax.eval_shape(jax.vmap(self.objective.init),
                                  jax.ShapeDtypeStruct((len(self.configs), 2), np.uint32))
    return precision.scoped(self.experiment.compile_evaluation)(param_shapes, self.tasks, configs, self.eval_devices)

  def compile_training(self, executor: concurrent.futures.Executor | None = None) -> None:
    """Compiles the training programs on `executor`'s thread (compiling runs nothing); None: here, now."""
    if executor is None:
      self.training = concurrent.futures.Future()
      self.training.set_result(self._compile_training())
    else:
      self.training = executor.submit(self._compile_training)

  def compile_evaluation(self, executor: concurrent.futures.Executor,
                         eval_configs: Sequence[ml_collections.ConfigDict] | None = None) -> None:
    """Compiles the evaluation programs on `executor`'s thread, for the configs of the first evaluation point
    (default: the runs' own)."""
    self.evaluation = executor.submit(self._compile_evaluation, list(eval_configs or self.configs))

  def fit(self, workdir: str | None, stop_on_divergence: bool = False) -> trainer.FitResult:
    """Trains the runs (resuming from `workdir`'s checkpoint); leaves have a leading run axis."""
    reference = self.experiment.reference(self.first_task, self.configs[0]) if len(self.configs) == 1 else None
    name, loss = reference if reference is not None else ("", None)
    programs = self.training.result() if self.training is not None else self._compile_training()
    fit_group = precision.scoped(trainer.fit_group)  # a resumed run may compile a chunk length here
    return fit_group(self.objective, self.optimizer, self.lr_schedule, self.settings, self.seeds, self.tasks, workdir,
                     reference_loss=loss, reference_name=name,
                     stop_on_divergence=stop_on_divergence, devices=self.devices,
                     data_parallel=self.data_parallel, programs=programs)

  def evaluate(self, params: Any, eval_points: Sequence[dict[str, Any]] = ({},)) -> list[list[dict[str, Any]]]:
    """The experiment's metrics of every run at every evaluation point: [point][run] -> dict.

    Each point's values are set on the runs' configs (evaluation-only fields). The
    programs `compile` started serve the first point; the experiment compiles the rest.
    """
    keys = np.stack([np.asarray(eval_key(seed)) for seed in self.seeds])
    configs_by_point = [[with_fields(config, point) if point else config for config in self.configs]
                        for point in eval_points]
    compiled = self.evaluation.result() if self.evaluation is not None else None
    points = f" at {len(eval_points)} evaluation points" if len(eval_points) > 1 else ""
    what = self._what(f"evaluating {len(self.configs)} run{'s' if len(self.configs) > 1 else ''}{points}")
    with progress.timed(what):
      return precision.scoped(self.experiment.evaluate_points)(params, self.tasks, configs_by_point, keys, compiled)
