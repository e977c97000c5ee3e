"""The one training loop: any model, loss and sampler, combined into `Objective.loss`.

A training step is a pure function (state, rng, task) -> (state, loss): the batch
is drawn inside the step from `fold_in(rng, step)`, so a run is reproducible and
resumable to the bit. `lax.scan` runs a chunk of steps per dispatch, the state
is donated, and the host reads the losses only at logging points, one chunk
late, so the device never waits on Python.

`fit_group` trains R runs of the same shapes (seeds, covariances, noise levels:
whatever differs only in array values) as one vmapped program whose run axis is
sharded over the devices; `fit` is the one-run case.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from icl_theory.engine import compiling, files, progress, sharding
from icl_theory.engine.validation import ConfigError, check_bool, check_choice, check_float, check_int

Params = Any


class Objective(NamedTuple):
  """What to train: `init(key) -> params`; `loss(params, key, task) -> scalar` on a fresh batch.

  `task` is a pytree of the run's data-distribution arrays (e.g. a RegressionTask):
  an argument rather than a closure, so that runs differing only in it share a program.
  `precondition(grads, task) -> grads`, if given, maps each step's gradient before
  the optimizer sees it (a curvature the experiment knows from the task).
  `runs_one_at_a_time`: on CPU devices, each device trains its share of a group's
  runs one after another (`lax.map`) instead of vmapped together; the same numbers.
  Steps of a few hundred prompts or more ran 25-30% faster so (vmap turns each small
  matrix product into a batched one); tiny steps gain from vmap's larger kernels.
  """
  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, jax.Array, Any], jax.Array]
  batch_size: int  # prompts per step, for the throughput figures
  precondition: Callable[[Params, Any], Params] | None = None
  runs_one_at_a_time: bool = False


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Params
  opt_state: Any


class TrainingDiverged(RuntimeError):
  """The loss became non-finite or exploded; the message names the step."""


# A loss this many times its value at step 1 has exploded: with Adam at a huge learning
# rate the LSA's loss grows like params^4 and can stay finite in float32 for thousands of steps.
DIVERGENCE_FACTOR = 1e4
# ... but only when it stays there this many consecutive steps (or to the end of training): deep
# linear attention trained well spikes past the factor and recovers within tens of steps (issue 18
# measured one spike at 2.5e4 times the start, back to 7e-4 forty steps later). A non-finite loss
# never recovers, so it stops a run at once.
DIVERGENCE_PATIENCE = 200
# A loss above this many times its start is logged as a spike (with its peak and how long it lasted).
SPIKE_FACTOR = 100.0


class _Guard:
  """Per run: a sustained rise or a non-finite loss is divergence; excursions that recover are spikes.

  Its state (the start loss, the current run of steps over the limit, the step a
  run diverged at) is checkpointed, so a resumed run is judged as if never stopped.
  """

  def __init__(self, num_runs: int):
    self.start = np.full(num_runs, np.nan, np.float32)  # |loss at step 1| floored at 1; nan until seen
    self.over = np.zeros(num_runs, np.int64)             # consecutive steps over the limit, up to now
    self.diverged_at = np.zeros(num_runs, np.int64)      # the first step of the bad stretch (0: never)
    self.spike_since = np.zeros(num_runs, np.int64)      # the step the current spike began (0: none)
    self.spike_peak = np.zeros(num_runs, np.float64)
    self.spikes: list[dict] = []

  def state(self) -> dict[str, np.ndarray]:
    return {"diverged_at": self.diverged_at, "loss_limit": DIVERGENCE_FACTOR * self.start,
            "over_limit_steps": self.over}

  def restore(self, saved: dict[str, np.ndarray]) -> None:
    self.diverged_at = np.asarray(saved["diverged_at"]).copy()
    self.start = np.asarray(saved["loss_limit"], np.float32) / DIVERGENCE_FACTOR
    if "over_limit_steps" in saved:
      self.over = np.asarray(saved["over_limit_steps"]).copy()

  def check(self, chunk_start: int, losses_RxK: np.ndarray, last_chunk: bool) -> list[tuple[int, str]]:
    """Reads one chunk's losses; returns (run, message) for each run that diverged in it."""
    if chunk_start == 0:
      self.start[:] = np.maximum(np.abs(losses_RxK[:, 0]), 1.0)  # nan stays nan: diverged
    limit = DIVERGENCE_FACTOR * self.start
    spike_limit = SPIKE_FACTOR * self.start
    newly = []
    for r in np.flatnonzero(self.diverged_at == 0):
      losses = losses_RxK[r]
      if np.all(losses <= spike_limit[r]) and self.over[r] == 0 and self.spike_since[r] == 0:
        continue  # the common case: nothing to look at
      for i, loss in enumerate(losses):
        step = chunk_start + i + 1
        if not np.isfinite(loss):
          self.diverged_at[r] = step
          newly.append((r, f"non-finite loss at step {step}"))
          break
        self._track_spike(r, step, float(loss), spike_limit[r])
        self.over[r] = self.over[r] + 1 if loss > limit[r] else 0
        if self.over[r] >= DIVERGENCE_PATIENCE:
          self.diverged_at[r] = step - DIVERGENCE_PATIENCE + 1
          newly.append((r, f"loss over {limit[r]:.3g} ({DIVERGENCE_FACTOR:g} times its start) for "
                           f"{DIVERGENCE_PATIENCE} steps, peak {self.spike_peak[r]:.3g}, "
                           f"at step {self.diverged_at[r]}"))
          break
      else:
        if last_chunk and self.over[r] > 0:  # still over the limit when training ends: it did not recover
          self.diverged_at[r] = chunk_start + losses.size - self.over[r] + 1
          newly.append((r, f"loss over {limit[r]:.3g} ({DIVERGENCE_FACTOR:g} times its start) to the last step, "
                           f"peak {self.spike_peak[r]:.3g}, at step {self.diverged_at[r]}"))
    return newly

  def _track_spike(self, r: int, step: int, loss: float, spike_limit: float) -> None:
    if loss > spike_limit:
      if self.spike_since[r] == 0:
        self.spike_since[r], self.spike_peak[r] = step, loss
      self.spike_peak[r] = max(self.spike_peak[r], loss)
    elif self.spike_since[r]:
      spike = {"run": int(r), "step": int(self.spike_since[r]), "steps": step - int(self.spike_since[r]),
               "peak": float(self.spike_peak[r]), "peak_over_start": float(self.spike_peak[r] / self.start[r])}
      self.spikes.append(spike)
      logging.warning("run %d: loss spiked to %.3g (%.3g times its start) at step %d and recovered after %d steps",
                      r, spike["peak"], spike["peak_over_start"], spike["step"], spike["steps"])
      self.spike_since[r], self.spike_peak[r] = 0, 0.0


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  steps: int
  log_every: int
  checkpoint_every: int  # 0: never
  keep_checkpoints: int = 3

  @classmethod
  def from_config(cls, config: Any) -> LoopSettings:
    """From a run config's steps, log_every, checkpoint_every and keep_checkpoints."""
    return cls(steps=config.steps, log_every=config.log_every, checkpoint_every=config.checkpoint_every,
               keep_checkpoints=config.keep_checkpoints)


@dataclasses.dataclass
class FitResult:
  state: TrainState        # for fit_group, every leaf has a leading run axis
  history: list[dict]      # one row per logging point; "loss" is a list over the runs of a group of several
  compile_seconds: float
  train_seconds: float     # compiled steps only, this process
  steps_this_process: int
  resumed_from: int
  diverged_at: np.ndarray | None = None  # fit_group: per run, the first bad step (0: never)
  spikes: list[dict] = dataclasses.field(default_factory=list)  # excursions over SPIKE_FACTOR that recovered

  def run_figures(self, batch_size: int) -> dict[str, Any]:
    """summary.json's training figures of a single run (`fit`): final loss, steps, resume point, timings, speed."""
    return {"final_train_loss": self.history[-1]["loss"] if self.history else None,
            "steps": int(np.max(self.state.step)),  # every run of a group is at the same step
            "resumed_from_step": self.resumed_from,
            "compile_seconds": self.compile_seconds,
            "train_seconds": self.train_seconds,
            "prompts_per_second": (self.steps_this_process * batch_size / self.train_seconds
                                   if self.steps_this_process else None)}


def make_optimizer(name: str, learning_rate: float, steps: int, warmup_steps: int, schedule: str,
                   end_lr_fraction: float = 0.0, clip_norm: float = 0.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Optimizer and its learning-rate schedule ('cosine': linear warm-up then cosine decay).

  `clip_norm` > 0 clips each step's gradient to that global norm first.
  """
  if schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1), end_value=learning_rate * end_lr_fraction)
  elif schedule == "constant":
    lr = optax.constant_schedule(learning_rate)
  else:
    raise ValueError(f"schedule={schedule!r} is not allowed: 'cosine' or 'constant'")
  if name == "adam":
    optimizer = optax.adam(lr)
  elif name == "sgd":
    optimizer = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"optimizer={name!r} is not allowed: 'adam' or 'sgd'")
  if clip_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
  return optimizer, lr


def validate_training_fields(config: Any) -> None:
  """Checks a run config's optimisation and bookkeeping fields (ConfigError naming the field)."""
  check_choice("optimizer", config.optimizer, ("adam", "sgd"))
  check_float("learning_rate", config.learning_rate, minimum=0.0, strict=True)
  check_float("clip_norm", config.clip_norm, minimum=0.0)
  check_choice("schedule", config.schedule, ("cosine", "constant"))
  check_int("warmup_steps", config.warmup_steps, 0)
  check_bool("data_parallel", config.get("data_parallel", True))
  check_int("batch_size", config.batch_size, 1)
  steps = check_int("steps", config.steps, 1)
  check_int("log_every", config.log_every, 1)
  check_int("checkpoint_every", config.checkpoint_every, 0)
  check_int("keep_checkpoints", config.keep_checkpoints, 1)
  check_int("eval_samples", config.eval_samples, 2)
  if config.schedule == "cosine" and config.warmup_steps >= steps:
    raise ConfigError(f"warmup_steps={config.warmup_steps!r} is not allowed: fewer than steps={steps}")


def optimizer_from_config(config: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`make_optimizer` from a run config's optimizer, learning_rate, steps, warmup_steps, schedule, clip_norm."""
  return make_optimizer(config.optimizer, config.learning_rate, config.steps, config.warmup_steps,
                        config.schedule, clip_norm=config.clip_norm)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """A run's (init key, training key): the two halves of its seed's key, as `fit_group` uses them."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_key, rng


def init_state(objective: Objective, optimizer: optax.GradientTransformation, key: jax.Array) -> TrainState:
  params = objective.init(key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def train_chunk(state: TrainState, rng: jax.Array, task: Any, objective: Objective,
                optimizer: optax.GradientTransformation, num_steps: int) -> tuple[TrainState, jax.Array]:
  """`num_steps` optimizer steps in one `lax.scan`; returns the new state and each step's loss."""
  grad_fn = jax.value_and_grad(objective.loss)

  def step(state: TrainState, _):
    loss, grads = grad_fn(state.params, jax.random.fold_in(rng, state.step), task)
    if objective.precondition is not None:
      grads = objective.precondition(grads, task)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), loss

  return jax.lax.scan(step, state, length=num_steps)




def _chunk_ends(start: int, settings: LoopSettings) -> list[int]:
  """Steps at which a chunk ends: every logging and checkpoint point, and the last step."""
  marks = {settings.steps}
  for every in (settings.log_every, settings.checkpoint_every):
    if every > 0:
      marks.update(range(every, settings.steps, every))
  return sorted(m for m in marks if m > start)


def _chunk_lengths(start: int, settings: LoopSettings) -> set[int]:
  """The distinct chunk lengths of a run from `start`: one compiled program each."""
  ends = _chunk_ends(start, settings)
  return {end - begin for begin, end in zip([start, *ends[:-1]], ends)}


def _placement(objective: Objective, devices: Sequence[jax.Device] | None, data_parallel: bool) -> sharding.Placement:
  if not data_parallel:
    on_cpu = all(device.platform == "cpu" for device in (devices or jax.local_devices()))
    return sharding.over_runs(devices, one_at_a_time=objective.runs_one_at_a_time and on_cpu)
  placement = sharding.over_data(devices)
  if objective.batch_size % placement.num_devices:
    raise ConfigError(f"batch_size={objective.batch_size} is not allowed: data-parallel training splits it over "
                      f"{placement.num_devices} devices, so a multiple of {placement.num_devices}")
  return placement


@dataclasses.dataclass
class GroupPrograms:
  """`fit_group`'s compiled programs for one group's shapes and devices; `compile_group` makes them.

  Compiling touches no device, so a sweep compiles its next group on another
  thread while the current one trains (`icl_theory.engine.sweep`).
  """
  objective: Objective
  optimizer: optax.GradientTransformation
  placement: sharding.Placement
  init: Any                # jax.stages.Compiled: init keys -> states
  shapes: tuple[Any, Any, Any]  # (states, rngs, tasks) as ShapeDtypeStructs, shardings included
  chunks: dict[int, Any] = dataclasses.field(default_factory=dict)  # chunk length -> Compiled
  compile_seconds: float = 0.0

  def chunk(self, num_steps: int) -> Any:
    """The compiled `train_chunk` of `num_steps` steps: (states, rngs, tasks) -> (states, losses)."""
    if num_steps not in self.chunks:
      t0 = time.perf_counter()
      chunk = functools.partial(train_chunk, objective=self.objective, optimizer=self.optimizer, num_steps=num_steps)
      with self.placement.tracing():
        lowered = jax.jit(self.placement.map(chunk), donate_argnums=0).lower(*self.shapes)
      # A device that loops over several runs compiles faster and runs as fast without the fusion
      # emitters; one run a device is a single run's program, kept bit for bit (a sweep of one run
      # gives the run's own numbers).
      runs_per_device = self.shapes[1].shape[0] // self.placement.num_devices
      looped = self.placement.one_at_a_time and runs_per_device > 1
      options = compiling.FAST_CPU_COMPILE if looped else None
      self.chunks[num_steps] = compiling.compile_lowered(lowered, self.placement.devices, options)
      self.compile_seconds += time.perf_counter() - t0
    return self.chunks[num_steps]


def compile_group(objective: Objective, optimizer: optax.GradientTransformation, settings: LoopSettings,
                  num_runs: int, tasks: Any, devices: Sequence[jax.Device] | None = None,
                  data_parallel: bool = False) -> GroupPrograms:
  """Compiles `fit_group`'s programs for `num_runs` runs of `tasks`' shapes, without running anything.

  `tasks` (arrays or ShapeDtypeStructs with a leading run axis) gives only shapes.
  The training chunks compiled are those of a run from step 0; a resumed run
  compiles its other lengths when it needs them.
  """
  t0 = time.perf_counter()
  placement = _placement(objective, devices, data_parallel)
  key_shapes = placement.shapes(jax.ShapeDtypeStruct((num_runs, 2), jnp.uint32))
  task_shapes = placement.shapes(tasks)
  init = compiling.compile_lowered(
      jax.jit(placement.map(lambda k: init_state(objective, optimizer, k))).lower(key_shapes), placement.devices)
  programs = GroupPrograms(objective, optimizer, placement, init, (init.out_info, key_shapes, task_shapes),
                           compile_seconds=time.perf_counter() - t0)
  for length in _chunk_lengths(0, settings):
    programs.chunk(length)
  return programs


def orbax_checkpoint():
  """`orbax.checkpoint`, imported on first use: a run that keeps no checkpoints saves its 0.3 s import."""
  import orbax.checkpoint as ocp  # imported here: only runs that keep checkpoints need it
  return ocp


def _checkpoint_manager(workdir: str, settings: LoopSettings):
  """An orbax CheckpointManager for `workdir`/checkpoints."""
  ocp = orbax_checkpoint()
  progress.quiet_libraries()
  # Each process saves its own runs alone: under jax.distributed orbax would otherwise wait
  # for every process at each save, and only process 0 would write.
  process = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process},
                                             barrier_sync_key_prefix=f"process{process}")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=settings.keep_checkpoints, enable_async_checkpointing=False, create=False,
      cleanup_tmp_directories=True,  # a kill mid-save leaves a tmp dir; never a half checkpoint
      multiprocessing_options=alone)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  os.makedirs(directory, exist_ok=True)  # orbax creates it only when every process saves
  return ocp.CheckpointManager(directory, options=options)


def format_eta(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _host_runs(tree: Any, num_runs: int) -> Any:
  """The first `num_runs` entries of each leaf, as host arrays: what a checkpoint holds.

  Without the padding a run axis gets on some device counts, so a sweep resumes on
  any number of devices; on the host, because under jax.distributed orbax refuses
  arrays that live on one process's devices.
  """
  return jax.device_get(jax.tree.map(lambda x: x[:num_runs], tree))


def fit_group(objective: Objective, optimizer: optax.GradientTransformation, lr_schedule: optax.Schedule,
              settings: LoopSettings, seeds: Sequence[int], tasks: Any, workdir: str | None = None,
              reference_loss: float | None = None, stop_on_divergence: bool = False, reference_name: str = "R*",
              devices: Sequence[jax.Device] | None = None, data_parallel: bool = False,
              programs: GroupPrograms | None = None) -> FitResult:
  """Trains len(seeds) runs as one vmapped program on `devices` (default: this process's).

  The runs are split over the devices, or with `data_parallel` every step's
  batch is (`icl_theory.engine.sharding`; the objective's sampler marks its batch with
  `sharding.shard_batch`, and `objective.batch_size` must divide evenly).
  `programs`: from `compile_group` with the same objective, settings, runs,
  devices and placement; compiled here when not given.

  `tasks` is a pytree whose leaves have a leading axis of len(seeds). Resumes from
  the latest checkpoint in `workdir`. A run whose loss turns non-finite, or stays
  above DIVERGENCE_FACTOR * max(|its loss at step 1|, 1) for DIVERGENCE_PATIENCE
  steps (or to the end), is marked in `diverged_at` and the others go on, unless
  `stop_on_divergence`, which raises `TrainingDiverged` before the diverged state
  could be checkpointed. A spike past SPIKE_FACTOR times the start that recovers is
  logged and listed in `spikes`.
  """
  num_runs = len(seeds)
  if programs is None:
    programs = compile_group(objective, optimizer, settings, num_runs, tasks, devices, data_parallel)
  placement = programs.placement
  keys = np.stack([np.asarray(jax.random.split(jax.random.PRNGKey(s))) for s in seeds])  # run_keys, stacked
  init_keys, rngs, tasks = placement.place((keys[:, 0], keys[:, 1], tasks))
  states = programs.init(init_keys)
  # Set from the first chunk's step-1 losses (and checkpointed): no program of its own to compile.
  guard = _Guard(num_runs)
  history: list[dict] = []
  manager = None
  if workdir and settings.checkpoint_every > 0:
    manager = _checkpoint_manager(workdir, settings)
  metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else None
  resumed_from = 0
  if manager is not None and manager.latest_step() is not None:
    resumed_from = manager.latest_step()
    target = {**_host_runs({"state": states, "rng": rngs}, num_runs), **guard.state()}
    try:
      restored = manager.restore(resumed_from, args=orbax_checkpoint().args.StandardRestore(target))
    except (KeyError, ValueError):  # a checkpoint from before the guard counted steps over the limit
      target.pop("over_limit_steps")
      restored = manager.restore(resumed_from, args=orbax_checkpoint().args.StandardRestore(target))
    states, rngs = placement.place((restored["state"], restored["rng"]))
    guard.restore(restored)
    history = [row for row in files.read_jsonl(metrics_path) if row["step"] <= resumed_from]
    logging.info("Resumed from the checkpoint at step %d in %s", resumed_from, workdir)

  start = resumed_from
  ends = _chunk_ends(start, settings)
  for length in _chunk_lengths(start, settings):
    programs.chunk(length)  # compile every chunk length up front: the timing below is training only
  # The logged learning rates, in one small program: evaluated op by op at each logging point, the
  # schedule's first call compiled a dozen one-op programs (0.2-0.5 s of a short run).
  rates = jax.jit(lr_schedule)(np.asarray(ends) - 1)
  if np.ndim(rates) == 0:  # a constant schedule ignores the step: its own number, not float32's
    rates = np.full(len(ends), lr_schedule(0))
  logged_lr = dict(zip(ends, np.asarray(rates, np.float64).tolist()))

  pending = None  # (first step, losses) of the chunk whose losses are not read yet
  t_start = time.perf_counter()
  last_log_time, last_log_step = t_start, start

  def drain(chunk_start: int, losses: jax.Array) -> None:
    nonlocal last_log_time, last_log_step
    losses = np.asarray(losses)[:num_runs]  # the host sync, one chunk late
    for r, what in guard.check(chunk_start, losses, chunk_start + losses.shape[1] == settings.steps):
      message = (f"{what}: training diverged; the learning rate is the "
                 f"likely cause (try a smaller --config.learning_rate)")
      if stop_on_divergence:
        kept = manager is not None and manager.latest_step() is not None
        raise TrainingDiverged(message + (f"; the last good checkpoint is kept in {workdir}" if kept else ""))
      logging.warning("run %d of %d: %s", r, num_runs, message)
    step = chunk_start + losses.shape[1]
    now = time.perf_counter()
    steps_per_s = (step - last_log_step) / max(now - last_log_time, 1e-9)
    last_log_time, last_log_step = now, step
    run_losses = np.where(guard.diverged_at == 0, losses.mean(axis=1), np.nan)
    # One run's loss is a number, a group's a list over its runs.
    row = {"step": step, "loss": run_losses.tolist() if num_runs > 1 else float(run_losses[0]), "learning_rate": logged_lr[step],
           "steps_per_second": steps_per_s, "elapsed_seconds": now - t_start}
    history.append(row)
    if metrics_path:
      files.write_jsonl(metrics_path, history)
    alive = run_losses[guard.diverged_at == 0]
    loss = float(alive.mean()) if alive.size else math.nan
    ref = "" if reference_loss is None else f" ({reference_name} {reference_loss:.4f}, {loss / reference_loss - 1:+.1%})"
    runs = "" if num_runs == 1 else f" (mean of {alive.size} runs)"
    eta = (settings.steps - step) / max(steps_per_s, 1e-9)
    logging.info("step %d/%d | loss %.4f%s%s | %.0f steps/s, %.3g prompts/s | ETA %s", step, settings.steps,
                 loss, runs, ref, steps_per_s, steps_per_s * objective.batch_size * num_runs, format_eta(eta))

  def save(step: int, saved: Any) -> None:
    manager.save(step, args=orbax_checkpoint().args.StandardSave({**saved, **guard.state()}))

  # A checkpoint's state is copied to the host when its chunk ends, and written while the next
  # chunk runs: the devices never wait on orbax (a sweep group saved 4 times in 2000 steps, and
  # each save held both devices idle for about 50 ms).
  unsaved = None  # (step, host state) of a checkpoint to write once the chunk after it is dispatched
  chunk_start = start
  for end in ends:
    states, losses = programs.chunk(end - chunk_start)(states, rngs, tasks)
    if pending is not None:
      drain(*pending)  # before the save: a diverged run is marked before it is saved
    if unsaved is not None:
      save(*unsaved)
      unsaved = None
    pending = (chunk_start, losses)
    if manager is not None and (end % settings.checkpoint_every == 0 or end == settings.steps):
      unsaved = end, _host_runs({"state": states, "rng": rngs}, num_runs)
    chunk_start = end
  if pending is not None:
    drain(*pending)
  if unsaved is not None:
    save(*unsaved)
  jax.block_until_ready(states)
  train_seconds = time.perf_counter() - t_start
  if manager is not None:
    manager.close()
  states = jax.tree.map(lambda x: x[:num_runs], states)
  return FitResult(state=states, history=history, compile_seconds=programs.compile_seconds, train_seconds=train_seconds,
                   steps_this_process=settings.steps - start, resumed_from=resumed_from, diverged_at=guard.diverged_at,
                   spikes=guard.spikes)


def fit(objective: Objective, optimizer: optax.GradientTransformation, lr_schedule: optax.Schedule,
        settings: LoopSettings, seed: int, task: Any = None, workdir: str | None = None,
        reference_loss: float | None = None, data_parallel: bool = True) -> FitResult:
  """Trains one run; resumes from `workdir`; logs progress.

  With `data_parallel` each step's batch is split over all of this process's
  devices (one device: nothing changes); without, the run stays on the first.

  `reference_loss` (e.g. the optimal risk R*) is printed beside the loss.
  Raises `TrainingDiverged` at the first non-finite loss, or once the loss has
  stayed above DIVERGENCE_FACTOR * max(|loss at step 1|, 1) for DIVERGENCE_PATIENCE
  steps, after keeping the last checkpoint saved before that.
  """
  tasks = jax.tree.map(lambda x: np.asarray(x)[None], task)
  result = fit_group(objective, optimizer, lr_schedule, settings, [seed], tasks, workdir, reference_loss,
                     stop_on_divergence=True, devices=None if data_parallel else jax.local_devices()[:1],
                     data_parallel=data_parallel)
  result.state = jax.tree.map(lambda x: x[0], result.state)
  return result
