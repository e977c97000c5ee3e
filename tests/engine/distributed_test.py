"""Beyond one device: data-parallel training on 4 CPU devices, and a sweep over 2 processes.

The 4-device checks run in a child process (XLA_FLAGS must be set before JAX
starts): `python tests/engine/distributed_test.py data_parallel` prints a JSON line.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from icl_theory.engine import distributed
from icl_theory.engine.validation import ConfigError

# The repository root, for the children that run this file as a script (pytest puts it on the path itself).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.engine.sweep_test import GRID_FLAGS, REPO, _csv  # noqa: E402  (the sweep tests' 8-run grid)

# The children run on CPU devices (also where a GPU is installed): multi-device and multi-process
# mechanics on forced host devices and gloo collectives.
CPU = {**os.environ, "JAX_PLATFORMS": "cpu"}
FOUR_DEVICES = {**CPU, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _data_parallel_child() -> None:
  """Trains the same runs on 1 device and data-parallel on 4; prints their loss curves and parameters."""
  import jax
  from icl_theory.engine import sharding, trainer
  from icl_theory.configs import classify, lsa
  from icl_theory.classification import experiment as classification
  from icl_theory.regression import experiment as lsa_regression
  from icl_theory.regression import statistics

  assert jax.local_device_count() == 4
  out = {}
  cases = {"lsa_wishart": (lsa, lsa_regression, {"sampler": "wishart"}),
           "lsa_tokens": (lsa, lsa_regression, {"sampler": "tokens", "n": 10}),
           "classification": (classify, classification, {"batch_size": 64, "learning_rate": 1.0})}
  for name, (configs, module, changes) in cases.items():
    config = configs.get_config()
    config.update(steps=60, warmup_steps=10, log_every=5, checkpoint_every=0, **changes)
    experiment = module.EXPERIMENT
    task = experiment.build_task(config)
    objective = experiment.objective(task, config, 1)  # a single run's objective
    optimizer, schedule = trainer.optimizer_from_config(config)
    settings = trainer.LoopSettings.from_config(config)
    for data_parallel in (False, True):
      result = trainer.fit(objective, optimizer, schedule, settings, 0, task, data_parallel=data_parallel)
      leaves = jax.tree.leaves(result.state.params)
      out[f"{name}/{data_parallel}"] = {
          "loss": [row["loss"] for row in result.history],
          "params": np.concatenate([np.ravel(leaf) for leaf in leaves]).tolist(),
          "devices": len(leaves[0].sharding.device_set)}
  # A group of 3 runs checkpointed on 1 device resumes on 4 (where its run axis is padded to 4).
  config = lsa.get_config()
  config.update(steps=20, warmup_steps=5, batch_size=256)
  task = lsa_regression.build_task(config)
  objective = lsa_regression.make_objective(task, config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  tasks = jax.tree.map(lambda x: np.stack([x] * 3), task)
  fit = lambda steps, devices, workdir: trainer.fit_group(
      objective, optimizer, schedule, trainer.LoopSettings(steps, 5, 10), [0, 1, 2], tasks, workdir, devices=devices)
  workdir = os.path.join(sys.argv[2], "resumed")
  fit(10, jax.local_devices()[:1], workdir)
  resumed = fit(20, None, workdir)
  straight = fit(20, None, None)
  out["resume_across_devices"] = {
      "resumed_from": resumed.resumed_from, "num_runs": len(resumed.state.step),
      "loss": [row["loss"] for row in resumed.history], "straight_loss": [row["loss"] for row in straight.history]}
  # The sampler's batch is split over the devices, not computed whole on each.
  config = lsa.get_config()
  task = lsa_regression.build_task(config)
  with sharding.over_data().tracing():
    lowered = jax.jit(lambda key: lsa_regression.sample_statistics(key, task, 1024)).lower(jax.random.PRNGKey(0))
  entries = lowered.compile().output_shardings.entries_ExB
  num_entries = len(statistics.factor_pattern(config.d + 1, config.n).rows)
  out["sampler_entries_shard_shape"] = list(entries.shard_shape((num_entries, 1024)))
  out["sampler_num_entries"] = num_entries
  # The classifier's Monte Carlo sums (4 chunks of 4096 prompts): split over the 4 devices, and on one.
  config = classify.get_config()
  task = classification.build_task(config)
  params = classification.make_objective(task, config).init(jax.random.PRNGKey(0))
  figures = {}
  for count in (4, 1):
    evaluator = classification.Evaluator(classification.make_model(config), config.eval_samples)
    figures[count] = {"devices": len(evaluator.devices)}
    evaluator.devices = evaluator.devices[:count]
    figures[count].update(evaluator(params, task, jax.random.PRNGKey(5), 20, 0.5, "unseen", "unseen"))
  out["evaluator"] = figures
  print(json.dumps(out))


@pytest.fixture(scope="module")
def data_parallel_runs(tmp_path_factory):
  child = subprocess.run([sys.executable, os.path.abspath(__file__), "data_parallel",
                          str(tmp_path_factory.mktemp("data_parallel"))], cwd=REPO,
                         capture_output=True, text=True, env=FOUR_DEVICES)
  assert child.returncode == 0, child.stderr[-3000:]
  return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lsa_wishart", "lsa_tokens", "classification"])
def test_data_parallel_training_matches_one_device(data_parallel_runs, case):
  one, four = data_parallel_runs[f"{case}/False"], data_parallel_runs[f"{case}/True"]
  assert one["devices"] == 1 and four["devices"] == 4
  # The same prompts at every step (the draws are functions of flat counters): only the
  # order of float32 sums differs, and that compounds slowly over 60 steps.
  assert len(one["loss"]) == len(four["loss"]) == 12
  np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-4)
  params_one, params_four = np.asarray(one["params"]), np.asarray(four["params"])
  assert np.linalg.norm(params_four - params_one) < 1e-4 * np.linalg.norm(params_one)
  # The run moved: the curves are compared where they change.
  assert one["loss"][-1] < 0.97 * one["loss"][0]


@pytest.mark.slow
def test_the_sampler_draws_a_quarter_of_the_batch_on_each_device(data_parallel_runs):
  assert data_parallel_runs["sampler_entries_shard_shape"] == [data_parallel_runs["sampler_num_entries"], 256]


@pytest.mark.slow
def test_a_group_checkpointed_on_one_device_resumes_on_four(data_parallel_runs):
  resumed = data_parallel_runs["resume_across_devices"]
  assert resumed["resumed_from"] == 10 and resumed["num_runs"] == 3
  # One run per device and three vmapped on one differ in the last float32 bits only.
  np.testing.assert_allclose(resumed["loss"], resumed["straight_loss"], rtol=1e-5)


@pytest.mark.slow
def test_the_classifier_evaluates_its_chunks_on_every_device(data_parallel_runs):
  four, one = data_parallel_runs["evaluator"]["4"], data_parallel_runs["evaluator"]["1"]
  assert four.pop("devices") == 4 and one.pop("devices") == 4  # chunk_devices: all 4 divide the 4 chunks
  assert four.keys() == one.keys() and 0 < one["unseen_error"] < 1 and one["unseen_hinge"] > 0
  for name, value in one.items():  # the same prompts: error counts exact, float sums to rounding
    assert four[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_batch_not_divisible_by_devices_is_refused():
  import jax
  from icl_theory.engine import trainer
  from icl_theory.configs import lsa
  from icl_theory.regression import experiment as lsa_regression
  config = lsa.get_config()
  config.update(batch_size=1023, steps=2, warmup_steps=1)
  task = lsa_regression.build_task(config)
  objective = lsa_regression.make_objective(task, config)
  optimizer, schedule = trainer.optimizer_from_config(config)
  cpu = jax.local_devices()[0]
  with pytest.raises(ConfigError, match=r"batch_size=1023 is not allowed: .* 2 devices, so a multiple of 2"):
    trainer.fit_group(objective, optimizer, schedule, trainer.LoopSettings.from_config(config), [0, 1],
                      jax.tree.map(lambda x: np.stack([x, x]), task), devices=[cpu, cpu], data_parallel=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_single_process_table(tmp_path):
  alone = subprocess.run([sys.executable, "-m", "icl_theory.sweep", *GRID_FLAGS, f"--workdir={tmp_path / 'one'}"],
                         cwd=REPO, capture_output=True, text=True, env=CPU)
  assert alone.returncode == 0, alone.stderr[-3000:]
  workdir, address = tmp_path / "two", f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-m", "icl_theory.sweep", *GRID_FLAGS, f"--workdir={workdir}",
                             f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CPU)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # Each process trained one of the two groups (n=4, n=16), on its own device.
  assert "process 0 of 2: 1 of 2 unfinished groups" in outputs[0][1]
  assert "process 1 of 2: 1 of 2 unfinished groups" in outputs[1][1]
  assert "process 1: 4/4 of its runs finished" in outputs[1][0]
  # A whole group trains in one process as the same program as in one process alone: the same bits.
  assert _csv(workdir / "results.csv") == _csv(tmp_path / "one" / "results.csv")
  assert sorted(os.listdir(workdir / "figures")) == sorted(os.listdir(tmp_path / "one" / "figures"))


def test_assign_balances_costs_deterministically():
  shares = distributed.assign([5, 1, 1, 3, 2, 2], 2)
  assert sorted(i for share in shares for i in share) == list(range(6))
  loads = [sum([5, 1, 1, 3, 2, 2][i] for i in share) for share in shares]
  assert loads == [7, 7]
  assert shares == distributed.assign([5, 1, 1, 3, 2, 2], 2)
  assert distributed.assign([1.0], 3) == [[0], [], []]


def test_launcher_processes_reads_slurm_and_mpi(monkeypatch):
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  for name in (*slurm, "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.launcher_processes() == 1
  for name, value in zip(slurm[:3], ("7", "node[01-08]", "8")):
    monkeypatch.setenv(name, value)
  assert distributed.launcher_processes() == 1  # an allocation, but not inside an srun step
  monkeypatch.setenv("SLURM_PROCID", "3")
  monkeypatch.setenv("SLURM_LOCALID", "0")
  assert distributed.launcher_processes() == 8
  for name in slurm:
    monkeypatch.delenv(name)
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert distributed.launcher_processes() == 2
  monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
  assert distributed.launcher_processes() == 4


def _connect_child() -> None:
  """Starts jax.distributed from the environment alone, as under srun; prints who it is."""
  import jax
  started = distributed.initialize()
  distributed.barrier("test: connected")
  print(json.dumps({"started": started, "process": jax.process_index(), "count": jax.process_count(),
                    "devices": jax.device_count(), "local": jax.local_device_count()}))


@pytest.mark.slow
def test_srun_is_detected_without_flags():
  # What srun would set for a 2-task step on this host; the port as JAX_COORDINATOR_PORT.
  env = {**CPU, "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
         "JAX_COORDINATOR_PORT": str(_free_port())}
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "connect"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert [s["process"] for s in seen] == [0, 1]
  assert all(s["started"] and s["count"] == 2 and s["devices"] == 2 * s["local"] for s in seen)


@pytest.mark.parametrize("flags, message", [
    (("127.0.0.1:1234", 2, None), "give all three"),
    (("localhost", 2, 0), "coordinator_address='localhost' is not allowed: HOST:PORT"),
    (("127.0.0.1:1234", 0, 0), "num_processes=0 is not allowed: an integer >= 1"),
    (("127.0.0.1:1234", 2, 2), r"process_id=2 is not allowed: an integer in \[0, num_processes=2\)"),
])
def test_bad_distributed_flags_are_refused(flags, message):
  with pytest.raises(ConfigError, match=message):
    distributed.check_flags(*flags)
  assert distributed.check_flags("127.0.0.1:1234", 1, 0) is False  # one process: nothing to start


def test_bad_flag_on_the_command_line_is_one_message():
  result = subprocess.run([sys.executable, "-m", "icl_theory.sweep", "--workdir=unused", "--num_processes=2",
                           "--process_id=5", "--coordinator_address=127.0.0.1:1"], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: process_id=5 is not allowed: an integer in [0, num_processes=2)"]


if __name__ == "__main__":
  {"data_parallel": _data_parallel_child, "connect": _connect_child}[sys.argv[1]]()
