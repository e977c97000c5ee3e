"""The generic training loop: chunking, checkpoint resume, divergence guard."""

import concurrent.futures
import dataclasses
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.engine import compiling, files, trainer
from icl_theory.configs import lsa as lsa_config
from icl_theory.regression import experiment as lsa_regression


def _setup(steps=40, learning_rate=0.01, **fields):
  config = lsa_config.get_config()
  config.update(**{**dict(d=2, n=4, batch_size=64, steps=steps, warmup_steps=5, learning_rate=learning_rate),
                   **fields})
  task = lsa_regression.validate_config(config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  return lsa_regression.make_objective(task, config), optimizer, schedule, task


def _fit(settings, workdir=None, **kw):
  objective, optimizer, schedule, task = _setup(steps=settings.steps, **kw)
  return trainer.fit(objective, optimizer, schedule, settings, seed=3, task=task, workdir=workdir)


@pytest.mark.slow
def test_chunking_does_not_change_the_result():
  one = _fit(trainer.LoopSettings(steps=40, log_every=40, checkpoint_every=0))
  many = _fit(trainer.LoopSettings(steps=40, log_every=7, checkpoint_every=0))
  chex.assert_trees_all_equal(one.state.params, many.state.params)
  assert [r["step"] for r in many.history] == [7, 14, 21, 28, 35, 40]


@pytest.mark.slow
def test_training_lowers_the_loss_towards_the_optimum():
  # d=2, n=4: predicting 0 costs E[y^2] = d = 2; the optimum is R* = d(d+1)/(n+d+1) = 6/7.
  result = _fit(trainer.LoopSettings(steps=200, log_every=50, checkpoint_every=0))
  assert result.history[-1]["loss"] < 0.5 * (2.0 + 6 / 7)


@pytest.mark.slow
def test_resume_from_checkpoint_is_bit_exact(tmp_path):
  settings = trainer.LoopSettings(steps=40, log_every=10, checkpoint_every=20)
  full = _fit(settings, workdir=str(tmp_path / "full"))
  # An interrupted run: stop after the checkpoint at step 20 (forget what came after), then resume.
  part = tmp_path / "part"
  _fit(trainer.LoopSettings(steps=40, log_every=10, checkpoint_every=20), workdir=str(part))
  shutil.rmtree(part / "checkpoints" / "40")
  files.write_jsonl(str(part / "metrics.jsonl"), [r for r in files.read_jsonl(str(part / "metrics.jsonl"))
                                                  if r["step"] <= 20])
  resumed = _fit(settings, workdir=str(part))
  assert resumed.resumed_from == 20
  assert resumed.steps_this_process == 20
  chex.assert_trees_all_equal(full.state.params, resumed.state.params)
  chex.assert_trees_all_equal(full.state.opt_state, resumed.state.opt_state)
  assert [r["step"] for r in resumed.history] == [10, 20, 30, 40]
  assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_keeps_only_the_last_checkpoints(tmp_path):
  _fit(trainer.LoopSettings(steps=50, log_every=10, checkpoint_every=10, keep_checkpoints=2), workdir=str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["40", "50"]


def test_exploding_loss_is_divergence():
  # Adam at lr=1e6: the loss explodes (~1e24) but stays finite in float32 for thousands of steps.
  with pytest.raises(trainer.TrainingDiverged, match=r"loss over .* at step \d+: training diverged.*learning rate"):
    _fit(trainer.LoopSettings(steps=3000, log_every=100, checkpoint_every=0), learning_rate=1e6)


def test_divergence_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(tmp_path):
  def loss(params, key, task):
    del key, task
    return jnp.where(params["t"] >= 13.5, jnp.nan, params["t"])  # t = 1 + step: nan from step 14 on

  objective = trainer.Objective(init=lambda key: {"t": jnp.ones(())}, loss=loss, batch_size=1)
  optimizer = trainer.optax.sgd(-1.0)  # the gradient is 1: each step adds 1 to t
  settings = trainer.LoopSettings(steps=30, log_every=10, checkpoint_every=10)
  with pytest.raises(trainer.TrainingDiverged, match="non-finite loss at step 14:"):
    trainer.fit(objective, optimizer, trainer.optax.constant_schedule(1.0), settings, seed=0, workdir=str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["10"]


def test_make_optimizer_rejects_unknown_names():
  with pytest.raises(ValueError, match="optimizer='rmsprop'"):
    trainer.make_optimizer("rmsprop", 0.1, 10, 1, "cosine")
  with pytest.raises(ValueError, match="schedule='linear'"):
    trainer.make_optimizer("adam", 0.1, 10, 1, "linear")


@pytest.mark.slow
@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_group_equals_runs_trained_one_by_one(one_at_a_time):
  objective, optimizer, schedule, _ = _setup(steps=60)
  objective = objective._replace(runs_one_at_a_time=one_at_a_time)  # vmapped, or looped on each device
  settings = trainer.LoopSettings(steps=60, log_every=20, checkpoint_every=0)
  tasks = [lsa_regression.RegressionTask(d=2, n=4, cov_x=cov, noise_std=noise)
           for cov, noise in [("identity", 0.0), ("geometric:5@1", 0.3), ("diag:1,2", 1.0)]]
  seeds = [0, 1, 2]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *tasks)
  group = trainer.fit_group(objective, optimizer, schedule, settings, seeds, stacked)
  assert group.state.step.shape == (3,)
  for r, (seed, task) in enumerate(zip(seeds, tasks)):
    alone = trainer.fit(objective, optimizer, schedule, settings, seed, task)
    run_r = jax.tree.map(lambda x: x[r], group.state.params)
    chex.assert_trees_all_close(run_r, alone.state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([row["loss"][r] for row in group.history],
                               [row["loss"] for row in alone.history], rtol=1e-5)


def test_runs_go_one_at_a_time_for_the_fused_loss_from_a_step_size_on_and_only_on_a_cpu():
  def objective(**fields):
    return _setup(**fields)[0]
  # d = 2, n = 4: min(n, d + 1) = 3 columns a prompt; 64 prompts fall below the threshold, 128 reach it.
  assert 64 * 3 < lsa_regression.ONE_AT_A_TIME_MIN_WORK <= 128 * 3
  assert not objective(batch_size=64).runs_one_at_a_time
  assert objective(batch_size=128).runs_one_at_a_time
  assert not objective(batch_size=128, num_layers=2).runs_one_at_a_time      # the einsum path: vmapped
  assert not objective(batch_size=128, response="relu").runs_one_at_a_time   # the token sampler: vmapped
  looped = trainer._placement(objective(batch_size=128), None, data_parallel=False)
  assert looped.one_at_a_time == (jax.devices()[0].platform == "cpu")
  assert not trainer._placement(objective(batch_size=64), None, data_parallel=False).one_at_a_time


def test_a_device_looping_over_several_runs_compiles_its_chunk_without_fusion_emitters(monkeypatch):
  # The options each program is compiled with (not compiled: only the choice is under test; the lowered
  # init stands in for its compiled self, whose out_info the chunk is lowered with).
  seen = []
  monkeypatch.setattr(compiling, "compile_lowered",
                      lambda lowered, devices, options=None: seen.append(options) or lowered)
  objective, optimizer, _, task = _setup(batch_size=128)
  settings = trainer.LoopSettings(steps=10, log_every=10, checkpoint_every=0)
  on_cpu = jax.devices()[0].platform == "cpu"
  for num_runs, looped, expected in [(3, True, compiling.FAST_CPU_COMPILE if on_cpu else None),
                                     (1, True, None),    # one run a device: a single run's program
                                     (3, False, None)]:  # vmapped
    seen.clear()
    tasks = jax.tree.map(lambda x: np.stack([np.asarray(x)] * num_runs), task)
    trainer.compile_group(objective._replace(runs_one_at_a_time=looped), optimizer, settings, num_runs, tasks,
                          devices=jax.devices()[:1])
    assert seen == [None, expected], (num_runs, looped, seen)  # the init program, then the chunk


def test_a_diverged_run_is_marked_and_the_others_go_on():
  def loss(params, key, task):
    del key
    return jnp.where(params["t"] >= task, jnp.nan, params["t"])  # run r is nan once t reaches task[r]

  objective = trainer.Objective(init=lambda key: {"t": jnp.ones(())}, loss=loss, batch_size=1)
  settings = trainer.LoopSettings(steps=30, log_every=10, checkpoint_every=0)
  result = trainer.fit_group(objective, trainer.optax.sgd(-1.0), trainer.optax.constant_schedule(1.0), settings,
                             [0, 0, 0], np.array([100.0, 13.5, 25.5]))
  np.testing.assert_array_equal(result.diverged_at, [0, 14, 26])
  np.testing.assert_array_equal(result.state.params["t"][0], 31.0)
  assert np.isnan(result.history[-1]["loss"][1]) and result.history[-1]["loss"][0] == np.mean(np.arange(21, 31))


@pytest.mark.slow
def test_programs_compiled_ahead_on_another_thread_train_the_same_runs(tmp_path):
  objective, optimizer, schedule, _ = _setup(steps=60)
  settings = trainer.LoopSettings(steps=60, log_every=20, checkpoint_every=30)
  tasks = [lsa_regression.RegressionTask(d=2, n=4, cov_x=cov) for cov in ("identity", "geometric:5@1")]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *tasks)
  with concurrent.futures.ThreadPoolExecutor(1) as thread:
    programs = thread.submit(trainer.compile_group, objective, optimizer, settings, 2, stacked).result()
  assert sorted(programs.chunks) == [10, 20]  # chunks end at 20, 30, 40, 60
  ahead = trainer.fit_group(objective, optimizer, schedule, settings, [0, 1], stacked, programs=programs)
  here = trainer.fit_group(objective, optimizer, schedule, settings, [0, 1], stacked)
  chex.assert_trees_all_equal(ahead.state, here.state)
  assert [row["loss"] for row in ahead.history] == [row["loss"] for row in here.history]
  # A run resumed from step 25 needs a chunk of 5 steps, compiled when first needed.
  workdir = str(tmp_path / "group")
  trainer.fit_group(objective, optimizer, schedule, dataclasses.replace(settings, steps=25), [0, 1], stacked,
                    workdir=workdir)
  resumed = trainer.fit_group(objective, optimizer, schedule, settings, [0, 1], stacked, workdir=workdir,
                              programs=programs)
  assert resumed.resumed_from == 25 and sorted(programs.chunks) == [5, 10, 20]
  chex.assert_trees_all_equal(resumed.state, here.state)


def _scripted(losses_by_step):
  """An objective whose loss at step s (1-based) is losses_by_step(s), through a counter t = s."""
  def loss(params, key, task):
    del key, task
    t = params["t"]
    return losses_by_step(t) + (t - jax.lax.stop_gradient(t))  # gradient 1: sgd(-1) adds 1 to t each step

  return trainer.Objective(init=lambda key: {"t": jnp.ones(())}, loss=loss, batch_size=1)


def _run_scripted(losses_by_step, steps, log_every=10):
  settings = trainer.LoopSettings(steps=steps, log_every=log_every, checkpoint_every=0)
  return trainer.fit_group(_scripted(losses_by_step), trainer.optax.sgd(-1.0), trainer.optax.constant_schedule(1.0),
                           settings, [0], np.zeros(1))


def test_a_spike_that_recovers_is_logged_and_training_goes_on():
  # From 1 to 1e6 (1e6 times the start, past DIVERGENCE_FACTOR) for 40 steps from step 51, then back to 1e-3.
  spike = lambda t: jnp.where(t < 51, 1.0, jnp.where(t < 91, 1e6, 1e-3))
  result = _run_scripted(spike, steps=300)
  assert result.diverged_at[0] == 0
  assert result.history[-1]["loss"] == pytest.approx(1e-3)
  assert result.spikes == [{"run": 0, "step": 51, "steps": 40, "peak": 1e6, "peak_over_start": 1e6}]


def test_a_sustained_rise_is_divergence_from_its_first_step():
  rise = lambda t: jnp.where(t < 51, 1.0, 1e6)
  result = _run_scripted(rise, steps=51 + trainer.DIVERGENCE_PATIENCE + 50)
  assert result.diverged_at[0] == 51
  with pytest.raises(trainer.TrainingDiverged, match=r"loss over .* for \d+ steps, .* at step 51: training diverged"):
    trainer.fit(_scripted(rise), trainer.optax.sgd(-1.0), trainer.optax.constant_schedule(1.0),
                trainer.LoopSettings(steps=400, log_every=10, checkpoint_every=0), seed=0)


def test_a_rise_shorter_than_the_patience_but_lasting_to_the_end_is_divergence():
  result = _run_scripted(lambda t: jnp.where(t < 51, 1.0, 1e6), steps=100)
  assert result.diverged_at[0] == 51


def test_a_non_finite_loss_stops_at_once_even_inside_a_spike():
  result = _run_scripted(lambda t: jnp.where(t < 51, 1.0, jnp.where(t < 60, 1e6, jnp.nan)), steps=300)
  assert result.diverged_at[0] == 60
