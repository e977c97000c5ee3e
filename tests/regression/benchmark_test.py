"""The benchmark: its reference implementation computes the same model on the same data distribution;
its rounds, whole-command parts, figure check and report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_theory.regression import benchmark
from icl_theory.regression import lsa
from icl_theory.regression.task import Prompts


def test_reference_loss_is_the_lsa_on_its_prompts():
  reference = benchmark.Reference(d=3, n=6, batch_size=8)
  tokens, y_query = jax.vmap(reference.sample_prompt)(jax.random.split(jax.random.PRNGKey(0), 8))
  keys = jax.random.split(jax.random.PRNGKey(1))
  params = {"W_PV": 0.3 * jax.random.normal(keys[0], (4, 4)), "W_KQ": 0.3 * jax.random.normal(keys[1], (4, 4))}
  # The query token's label slot is 0, and the label is the query's y = w^T x_q.
  np.testing.assert_array_equal(tokens[:, -1, -1], 0.0)
  prompts = Prompts(x=tokens[:, :-1, :-1], y=tokens[:, :-1, -1], x_query=tokens[:, -1, :-1], y_query=y_query)
  ours = jnp.mean((lsa.predict({"layer_0": params}, prompts) - y_query) ** 2)
  np.testing.assert_allclose(reference.loss(params, tokens, y_query), ours, rtol=1e-5)


def test_reference_prompts_are_noiseless_linear_gaussian():
  reference = benchmark.Reference(d=3, n=6)
  tokens, y_query = jax.vmap(reference.sample_prompt)(jax.random.split(jax.random.PRNGKey(2), 20_000))
  x = np.asarray(tokens[:, :-1, :-1], np.float64)
  # E[x x^T] = I within 5 standard errors per entry (the entries of x_i x_i^T have variance 1 or 2).
  second = np.einsum("bti,btj->ij", x, x) / (x.shape[0] * x.shape[1])
  assert np.abs(second - np.eye(3)).max() < 5 * np.sqrt(2 / (x.shape[0] * x.shape[1]))
  # Each context label is w^T x_i for one w per prompt: the context is exactly solvable.
  w = np.linalg.lstsq(x[0], np.asarray(tokens[0, :-1, -1], np.float64), rcond=None)[0]
  np.testing.assert_allclose(tokens[0, -1, :-1] @ w, y_query[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_reference_and_trainer_run():
  assert benchmark.Reference(d=2, n=3, batch_size=16).prompts_per_second(steps=3, warmup=1) > 0
  config = benchmark._job_config(d=2, n=3, batch_size=16, steps=20)
  assert benchmark.trainer_step_seconds(config) > 0


def test_unknown_figure_is_refused():
  with pytest.raises(ValueError, match="figures='speed' is not allowed"):
    benchmark.run(("speed",))


def test_alternating_rounds_keep_every_round_and_report_medians():
  calls = []
  slow_fast = iter([10.0, 1.0, 12.0, 1.0, 11.0])  # a slow side whose second and fourth rounds ran fast

  def a():
    calls.append("a")
    return {"a_seconds": next(slow_fast)}

  def b():
    calls.append("b")
    return {"b_seconds": 2.0 * len(calls)}

  measured = benchmark.alternating([a, b], rounds=5, ratios={"a_over_b": lambda r: r["a_seconds"] / r["b_seconds"]})
  assert calls == ["a", "b"] * 5
  assert measured["num_rounds"] == 5
  assert measured["rounds"]["a_seconds"] == [10.0, 1.0, 12.0, 1.0, 11.0]
  assert measured["rounds"]["b_seconds"] == [4.0, 8.0, 12.0, 16.0, 20.0]
  assert measured["a_seconds"] == 10.0 and measured["b_seconds"] == 12.0
  # The ratio is taken within each round, then its median.
  np.testing.assert_allclose(measured["rounds"]["a_over_b"], [2.5, 0.125, 1.0, 0.0625, 0.55])
  assert measured["a_over_b"] == pytest.approx(0.55)
  assert benchmark.ROUNDS == 5


def test_alternating_refuses_no_rounds_and_clashing_names():
  with pytest.raises(ValueError, match="rounds=0"):
    benchmark.alternating([lambda: {"x": 1.0}], rounds=0)
  with pytest.raises(ValueError, match="same names"):
    benchmark.alternating([lambda: {"x": 1.0}, lambda: {"x": 2.0}], rounds=1)


def test_process_parts_split_a_whole_command():
  summary = {"wall_seconds": 5.0, "compile_seconds": 1.5, "train_seconds": 2.0, "eval_seconds": 1.0}
  parts = benchmark.process_parts("job_warm", 7.25, summary)
  assert parts == {"job_warm_seconds": 7.25, "job_warm_startup_exit_seconds": 2.25,
                   "job_warm_compile_seconds": 1.5, "job_warm_train_seconds": 2.0,
                   "job_warm_eval_seconds": 1.0, "job_warm_rest_seconds": 0.5}
  assert sum(parts[f"job_warm_{part}_seconds"] for part in benchmark.PARTS) == pytest.approx(7.25)


def _fake_command_figure(name, warm, cold):
  measured = {}
  for cache, seconds in (("cold", cold), ("warm", warm)):
    parts = benchmark.process_parts(f"{name}_{cache}", seconds, {"wall_seconds": seconds - 1.0, "compile_seconds": 0.5,
                                                                 "train_seconds": 1.0, "eval_seconds": 0.5})
    measured.update(parts)
  return {**measured, "rounds": {key: [value] * 5 for key, value in measured.items()}, "num_rounds": 5}


def test_job_figure_is_accepted_measured_judged_and_printed(monkeypatch):
  benchmark.check_figures(("job",))
  benchmark.check_figures(benchmark.FIGURES)
  assert benchmark.FIGURES[0] == "job"
  asked = []

  def fake_job(workdir, **kwargs):  # the figure's command is not run in a fast test
    asked.append(workdir)
    return {"command": ["python", "-m", "icl_theory.main"], **_fake_command_figure("job", warm=5.0, cold=11.0)}

  monkeypatch.setattr(benchmark, "job", fake_job)
  report = benchmark.run(("job",))
  assert len(asked) == 1 and set(report) == {"machine", "goals", "job", "met"}
  assert report["met"] == {"job_warm_seconds": True, "job_cold_seconds": False}
  assert report["goals"]["job_warm_seconds"] == "<= 6" and report["goals"]["job_cold_seconds"] == "<= 10"
  text = benchmark.format_report(report)
  assert "job_warm_seconds" in text and "job_cold_seconds" in text
  assert "startup_exit 1.00, compile 0.50, train 1.00, eval 0.50, rest 2.00 s" in text  # the warm run's parts
  assert "goals met: 1 of 2 (not: job_cold_seconds)" in text


def _fake_default_run(workdir, **kwargs):
  return {"command": ["python", "-m", "icl_theory.main"], **_fake_command_figure("default_run", warm=3.0, cold=5.0)}


def test_a_run_cut_short_resumes_with_the_figures_it_kept(monkeypatch, tmp_path):
  out = str(tmp_path / "report.json")
  asked = []
  monkeypatch.setattr(benchmark, "job", lambda workdir, **kw: asked.append("job") or {
      **_fake_command_figure("job", warm=7.0, cold=9.0)})
  monkeypatch.setattr(benchmark, "default_run", lambda workdir, **kw: asked.append("default_run") or _fake_default_run(
      workdir))
  benchmark.run(("job",), out)                               # the first part: the job only
  report = benchmark.run(("job", "default_run"), out, resume=True)
  assert asked == ["job", "default_run"]                     # the job was not measured again
  assert report["job"]["job_warm_seconds"] == 7.0 and report["default_run"]["default_run_warm_seconds"] == 3.0
  assert [part["figures"] for part in report["parts"]] == [["job"], ["default_run"]]
  assert report["met"] == {"job_warm_seconds": False, "job_cold_seconds": True, "default_run_warm_seconds": True}
  assert benchmark.files.read_json(out) == report


def test_join_takes_the_later_figure_and_refuses_another_machine():
  machine = {"platform": "gpu", "device_kind": "H200", "num_devices": 1, "cpu_count": 16, "jax": "0.11.2",
             "commit": "abc"}
  goals = {k: "x" for k in benchmark.GOALS}
  first = {"machine": machine, "goals": goals, "job": _fake_command_figure("job", warm=7.0, cold=9.0),
           "default_run": _fake_command_figure("default_run", warm=5.0, cold=6.0)}
  second = {"machine": machine, "goals": goals, "default_run": _fake_command_figure("default_run", warm=3.0, cold=6.0)}
  joined = benchmark.join([first, second])
  assert joined["job"] == first["job"] and joined["default_run"] == second["default_run"]
  assert joined["met"]["default_run_warm_seconds"] and not joined["met"]["job_warm_seconds"]
  assert [p["figures"] for p in joined["parts"]] == [["job", "default_run"], ["default_run"]]
  with pytest.raises(ValueError, match="differ in device_kind"):
    benchmark.join([first, {**second, "machine": {**machine, "device_kind": "cpu"}}])


def test_goals_are_the_issues():
  assert benchmark.GOALS == {
      "job_warm_seconds": ("<=", 6.0), "job_cold_seconds": ("<=", 10.0), "default_run_warm_seconds": ("<=", 4.0),
      "classify_run_warm_seconds": ("<=", 12.0), "throughput_ratio_vs_reference": (">=", 12.0),
      "cost_ratio_n1000_vs_n10": ("<=", 1.5), "time_to_theorem_seconds": ("<=", 15.0),
      "sweep_overhead_ratio": ("<=", 1.1)}
  assert benchmark.JOB_COMMAND == dict(d=10, n=10, batch_size=2048, steps=3000, optimizer="adam",
                                       learning_rate=1e-3, checkpoint_every=0)


@pytest.mark.slow
def test_job_figure_runs_cold_then_warm(tmp_path):
  tiny = dict(steps=20, warmup_steps=5, batch_size=64, eval_samples=1000)
  measured = benchmark.job(str(tmp_path), rounds=1, overrides=tiny)
  assert measured["num_rounds"] == 1
  assert "--config.steps=20" in measured["command"] and "--config.checkpoint_every=0" in measured["command"]
  for cache in ("cold", "warm"):
    total = measured[f"job_{cache}_seconds"]
    assert total > 0 and measured["rounds"][f"job_{cache}_seconds"] == [total]
    assert sum(measured[f"job_{cache}_{part}_seconds"] for part in benchmark.PARTS) == pytest.approx(total)
  # The warm run loads what the cold one compiled.
  assert measured["job_warm_compile_seconds"] < measured["job_cold_compile_seconds"]
