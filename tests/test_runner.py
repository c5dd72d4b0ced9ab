"""The runner's executors (local processes, a Dask LocalCluster), its faults and its --dry-run plan.

The runs are real smoke-profile arithmetic runs through ./run_all.sh's entry point, in subprocesses
(a LocalCluster starts worker processes, and Ctrl-C goes to a whole process group)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from rlformal_utils import runner
from rlformal_utils.executors import DaskCluster, Job, LocalProcesses

TIMING = {"wall_seconds", "cpu_seconds", "train_seconds", "train_cpu_seconds"}  # differ between any two runs
GROUP, PPO = "group_batch_kl-policy_pre32_s0", "ppo_none_kl-frozen_pre32_s0"
TIMINGS_COLUMNS = ["profile", "experiments", "runs", "jobs", "threads_per_job", "cpu_count", "load_average_start",
                   "wall_seconds", "cache_empty", "failed", "executor"]


def runner_cmd(results, *args, runs=(GROUP, PPO)):
    return [sys.executable, "-m", "rlformal_utils.runner", "--profile", "smoke", "--only", "arithmetic", "--jobs", "2",
            "--results-dir", str(results), "--no-figures", "--runs", *runs, *args]


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=timeout)
    return proc, proc.stdout + proc.stderr


def complete(results, name):
    return runner.run_complete(runner.Run("arithmetic", name), results)


def descendants(pid):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def alive(procs):
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def running_run(pid, name, exclude=()):
    """The papermill wrapper of run ``name`` under process ``pid`` once its kernel has started, or None."""
    for p in descendants(pid):
        try:
            if p.pid not in exclude and "--child-of" in p.cmdline() and any(name in a for a in p.cmdline()) \
                    and p.children():
                return p
        except psutil.Error:
            pass
    return None


def wait_for(condition, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------- same runs, either executor
def test_dask_local_cluster_writes_the_same_runs_as_local_processes(tmp_path):
    local, dask = tmp_path / "local", tmp_path / "dask"
    first, out = run(runner_cmd(local))
    assert first.returncode == 0, out[-3000:]
    second, out = run(runner_cmd(dask, "--dask-scheduler", "local"))
    assert second.returncode == 0, out[-3000:]
    assert "to run on a Dask LocalCluster with 2 job(s) x 1 thread(s)" in out

    for name in (GROUP, PPO):
        a, b = local / "arithmetic" / name, dask / "arithmetic" / name
        assert complete(local, name) and complete(dask, name), name
        assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes(), name
        config = json.loads((a / "config.json").read_text())
        assert config["seed"] == 0
        ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
        assert sorted(ma.columns) == sorted(mb.columns) and len(ma.columns) > 30
        assert len(ma) == len(mb) == config["steps"] + 1  # step 0, then one row per step
        same = sorted(set(ma.columns) - TIMING)
        pd.testing.assert_frame_equal(ma[same], mb[same], check_exact=True)
        assert not (b / "papermill.log").exists() and not (b / "notebook.partial.ipynb").exists()

    for results, executor in ((local, "local"), (dask, "dask-local")):
        timings = pd.read_csv(results / "timings.csv")
        assert list(timings.columns) == TIMINGS_COLUMNS
        row = timings.iloc[0]
        assert (row["runs"], row["jobs"], row["threads_per_job"], row["failed"], row["executor"]) == \
            (2, 2, max(1, (os.cpu_count() or 1) // 2), 0, executor)
        assert row["cpu_count"] == os.cpu_count() and row["wall_seconds"] > 0
        log = pd.read_csv(results / "runner_log.csv")
        assert sorted(log["run"]) == sorted([GROUP, PPO]) and log["ok"].all()

    # complete runs are skipped on the cluster as well; --redo reruns only what it is asked to
    again, out = run(runner_cmd(dask, "--dask-scheduler", "local"))
    assert again.returncode == 0 and "2 complete (skipped), 0 to run" in out
    assert len(pd.read_csv(dask / "timings.csv")) == 1  # nothing trained, no row

    # the figure step over these two runs only: with --results-dir elsewhere the figures go next to the
    # results, and the repository's figures are not touched
    repo_figures = {f: f.stat().st_mtime_ns for f in (runner.REPO_ROOT / "figures").glob("arithmetic_*")}
    drawn, out = run([a for a in runner_cmd(local) if a != "--no-figures"])
    assert drawn.returncode == 0, out[-3000:]
    assert "2 complete (skipped), 0 to run" in out and "figures: arithmetic in" in out
    assert (local / "figures" / "arithmetic_reward.png").stat().st_size > 10_000
    assert (local / "figures" / "arithmetic_histograms.png").exists()
    assert {f: f.stat().st_mtime_ns for f in (runner.REPO_ROOT / "figures").glob("arithmetic_*")} == repo_figures


def test_an_unreachable_scheduler_fails_fast_with_a_message_and_writes_nothing(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t = time.time()
    proc, out = run(runner_cmd(tmp_path / "results", "--dask-scheduler", address), timeout=120)
    assert time.time() - t < 20
    assert proc.returncode == 2
    assert re.search(rf"error: cannot reach the Dask scheduler at {re.escape(address)} within 10 s", proc.stderr)
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize("make", [lambda: LocalProcesses(2), lambda: DaskCluster("local", 2)], ids=["local", "dask-local"])
def test_a_run_whose_notebook_fails_is_reported_with_its_error_and_never_looks_complete(tmp_path, make):
    nb = str(runner.NOTEBOOKS / "arithmetic.ipynb")
    good = runner.runs_for("arithmetic", "smoke")[0]  # the base model's evaluation: seconds
    jobs = [runner.run_job(good, tmp_path, 1),
            Job("arithmetic/bad", nb, str(tmp_path / "arithmetic" / "bad"),
                dict(good.params, algorithm="grpo", output_dir=str(tmp_path / "arithmetic" / "bad")),
                "arithmetic.ipynb", 1)]
    with make() as executor:
        outcomes = {job.name: out for job, out in executor.run(jobs)}
    assert outcomes[f"arithmetic/{good.name}"].ok and runner.run_complete(good, tmp_path)
    bad = outcomes["arithmetic/bad"]
    assert not bad.ok and "ParameterError: parameter algorithm='grpo' is not allowed" in bad.error
    assert sorted(p.name for p in (tmp_path / "arithmetic" / "bad").iterdir()) == ["notebook.partial.ipynb",
                                                                                   "papermill.log"]


def test_a_worker_that_dies_mid_run_is_retried_once_then_the_run_fails_and_the_others_finish(tmp_path):
    """Kill the Dask worker that executes the group run, then the one that executes its retry: the run
    fails and stays incomplete, its papermill and kernel die with each worker, the other run finishes.
    (Two runs on two workers: a run queued behind a killed one would count that death as well.)"""
    results = tmp_path / "results"
    proc = subprocess.Popen(runner_cmd(results, "--dask-scheduler", "local"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    killed, trees = [], []
    try:
        for attempt in range(2):  # the first attempt and its one retry
            wrapper = wait_for(lambda: running_run(proc.pid, GROUP, exclude=killed), 120, f"attempt {attempt + 1}")
            trees.append(wrapper.children(recursive=True) + [wrapper])
            wrapper.parent().kill()  # the Dask worker process
            killed.append(wrapper.pid)
            wait_for(lambda: not alive(trees[-1]), 10, "papermill and its kernel to die with their worker")
            assert not complete(results, GROUP)
        out, _ = proc.communicate(timeout=300)
    finally:
        for p in alive([p for tree in trees for p in tree]) + ([proc] if proc.poll() is None else []):
            p.kill()
    assert proc.returncode == 1, out[-3000:]
    assert re.search(rf"FAILED arithmetic/{GROUP} .*KilledWorker", out)
    assert f"done arithmetic/{PPO}" in out and complete(results, PPO)
    group = results / "arithmetic" / GROUP
    assert not complete(results, GROUP) and not (group / "summary.json").exists()
    assert not (group / "arithmetic.ipynb").exists()
    assert pd.read_csv(results / "timings.csv")["failed"].tolist() == [1]


@pytest.mark.parametrize("executor", [[], ["--dask-scheduler", "local"]], ids=["local", "dask-local"])
def test_ctrl_c_stops_the_runs_and_leaves_no_process_behind(tmp_path, executor):
    results = tmp_path / "results"
    # as from a terminal: Ctrl-C at its default, even if something earlier in this process ignored it
    # (children inherit an ignored SIGINT, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen(runner_cmd(results, *executor), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: running_run(proc.pid, GROUP) and running_run(proc.pid, PPO), 120, "both runs to start")
        below = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, f"SIGINT in the test process: {signal.getsignal(signal.SIGINT)}\n{out[-3000:]}"
    assert "interrupted: 0 of 2 runs finished" in out
    wait_for(lambda: not alive(below), 10, "every process below the runner to end")
    assert not complete(results, GROUP) and not complete(results, PPO)
    assert not (results / "timings.csv").exists()


# ----------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("profile", runner.PROFILES)
def test_dry_run_prints_runs_and_cost_per_experiment(tmp_path, capsys, profile):
    assert runner.main(["--profile", profile, "--dry-run", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    total = 0.0
    for e in runner.DEFAULT_EXPERIMENTS:
        runs = runner.runs_for(e, profile)
        if not runs:
            assert not re.search(rf"^  {e} ", out, re.M)
            continue
        cpu = sum(r.estimate_s for r in runs)
        total += cpu
        row = rf"^  {e} +{len(runs)} +{len(runs)} +{re.escape(runner._hours(cpu))} +{re.escape(runner._hours(cpu))}"
        if profile == "paper":
            fast, slow = runner.GPU_SPEEDUP[e]
            row += rf" +{re.escape(runner._hours(cpu / slow))}-{re.escape(runner._hours(cpu / fast))}$"
        assert re.search(row, out, re.M), (e, out)
    assert re.search(rf"^  total .*{re.escape(runner._hours(total))}", out, re.M)
    assert ("ASSUMED, not measured" in out) == (profile == "paper")
    assert not (tmp_path / "r").exists()


def test_dry_run_counts_only_the_runs_left_to_do(tmp_path, capsys):
    results = tmp_path / "r"
    done = runner.runs_for("arithmetic", "smoke")[0]
    d = done.out_dir(results)
    d.mkdir(parents=True)
    for f in ("config.json", "metrics.csv", "summary.json", "arithmetic.ipynb"):
        (d / f).write_text("{}")
    runner.main(["--profile", "smoke", "--only", "arithmetic", "--dry-run", "--results-dir", str(results)])
    out = capsys.readouterr().out
    n = len(runner.runs_for("arithmetic", "smoke"))
    assert f"{n} runs in arithmetic; 1 complete (skipped), {n - 1} to run" in out
    assert re.search(rf"^  arithmetic +{n} +{n - 1} ", out, re.M)
    assert f"  arithmetic/{done.name}\n" not in out


def test_one_run_per_experiment_then_the_longest_runs_first(tmp_path, capsys):
    runner.main(["--profile", "quick", "--dry-run", "--results-dir", str(tmp_path / "r")])
    listed = re.findall(r"^  (\w+)/(\S+)$", capsys.readouterr().out, re.M)
    runs = {(r.experiment, r.name): r for e in runner.DEFAULT_EXPERIMENTS for r in runner.runs_for(e, "quick")}
    assert sorted(listed) == sorted(runs)
    # one run of each experiment first (it builds that experiment's caches), then longest first
    firsts = [next(key for key in runs if key[0] == e) for e in runner.DEFAULT_EXPERIMENTS]
    assert sorted(listed[:3]) == sorted(firsts)
    estimates = [runs[key].estimate_s for key in listed[3:]]
    assert estimates == sorted(estimates, reverse=True) and estimates[0] > estimates[-1]
    # so no two runs of one experiment start together while its caches are being built
    assert len({e for e, _ in listed[:2]}) == 2


def test_timings_rows_from_an_older_runner_are_kept_when_columns_are_added(tmp_path):
    from rlformal_utils.runner import _append_timing
    path = tmp_path / "timings.csv"
    path.write_text("profile,wall_seconds\nquick,10.5\n")          # written before the executor column existed
    _append_timing(path, dict(profile="smoke", wall_seconds=2.0, executor="local"))
    _append_timing(path, dict(profile="smoke", wall_seconds=3.0, executor="dask-local"))
    assert path.read_text().splitlines() == ["profile,wall_seconds,executor", "quick,10.5,",
                                             "smoke,2.0,local", "smoke,3.0,dask-local"]


def test_the_timings_table_is_drawn_from_timings_csv(tmp_path):
    from rlformal_utils.runner import timings_table
    (tmp_path / "timings.csv").write_text("profile,experiments,runs,jobs,wall_seconds\nquick,games,2,2,1145.2\n")
    lines = timings_table(tmp_path).splitlines()
    assert lines[0] == "| profile | experiments | runs | jobs | wall seconds | wall minutes |"
    assert lines[2] == "| quick | games | 2 | 2 | 1145.2 | 19.1 |" and len(lines) == 3


def test_figure_notebooks_run_side_by_side_in_one_results_folder(tmp_path, monkeypatch):
    """Two figure notebooks at once write into the same results folder: each keeps its own partial
    copy and log while it runs, and both end as their executed notebooks (no collision)."""
    import nbformat
    n_cells = {"one": 20, "two": 40}  # ~3 s and ~6 s
    for e in ("one", "two"):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        nb.cells = [nbformat.v4.new_code_cell("results_dir = figures_dir = profile = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(f"import pathlib, time\npathlib.Path(figures_dir, '{e}.txt').write_text(profile)")]
        # many short cells: papermill saves its partial copy after each, so a shared copy would be overwritten
        nb.cells += [nbformat.v4.new_code_cell(f"print('this is {e}'); time.sleep(0.15)") for _ in range(n_cells[e])]
        nbformat.write(nb, tmp_path / f"{e}_figures.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS", tmp_path)
    monkeypatch.setattr(runner, "FIGURE_NOTEBOOKS", {"one": "one_figures.ipynb", "two": "two_figures.ipynb"})
    results, figures, failed = tmp_path / "results", tmp_path / "figures", []
    figures.mkdir()
    t = time.time()
    assert runner.draw_figures(["one", "two"], results, figures, "smoke", 2, failed) and failed == []
    assert time.time() - t < 3 + 6 + 2  # side by side (one after the other: 9 s of cells and two kernel starts)
    assert sorted(p.name for p in results.iterdir()) == ["one_figures.ipynb", "two_figures.ipynb"]
    for e, other in (("one", "two"), ("two", "one")):
        executed = (results / f"{e}_figures.ipynb").read_text()
        assert f"this is {e}" in executed and f"this is {other}" not in executed
    assert (figures / "one.txt").read_text() == (figures / "two.txt").read_text() == "smoke"


def test_only_the_quick_and_long_results_refresh_the_readme_findings(tmp_path):
    from rlformal_utils.runner import REPO_ROOT, refreshes_findings
    assert refreshes_findings("quick", REPO_ROOT / "results")
    assert refreshes_findings("long", REPO_ROOT / "results" / "long")
    assert not refreshes_findings("classroom", REPO_ROOT / "results" / "classroom")
    assert not refreshes_findings("smoke", REPO_ROOT / "results")
    assert not refreshes_findings("quick", tmp_path)


def test_an_executed_copy_is_given_only_the_parameters_that_differ_from_the_notebook():
    from rlformal_utils.arithmetic.params import PARAMS
    default = {p.name: p.default for p in PARAMS}
    run = runner.Run("arithmetic", "x", dict(default, seed=2, steps=default["steps"] + 1))
    job = runner.run_job(run, Path("/tmp/results"), threads=1)
    assert set(job.params) == {"seed", "steps", "output_dir"}
    assert job.params["seed"] == 2 and job.params["steps"] == default["steps"] + 1
    assert runner.changed_params("arithmetic", dict(seed=float(default["seed"]))) == dict(seed=float(default["seed"]))


def _fake_launches(monkeypatch, logs: list[str]):
    """executors._launch replaced: attempt i writes logs[i] and fails, unless logs[i] is "ok"."""
    from rlformal_utils import executors
    calls = []

    def launch(cmd, env, log, should_stop):
        text = logs[len(calls)]
        calls.append(text)
        Path(log).write_text(text)
        if text == "ok":
            partial = Path(cmd[cmd.index("--cwd") - 1])
            partial.write_text(json.dumps(dict(cells=[], metadata={}, nbformat=4, nbformat_minor=5)))
            return 0
        return 1
    monkeypatch.setattr(executors, "_launch", launch)
    return calls


def test_a_kernel_that_dies_before_answering_is_started_once_more(tmp_path, monkeypatch):
    from rlformal_utils import executors
    job = Job("a/run", "notebooks/arithmetic.ipynb", str(tmp_path / "run"), {}, "arithmetic.ipynb", 1)
    calls = _fake_launches(monkeypatch, ["RuntimeError: " + executors.KERNEL_START_FAILED, "ok"])
    assert executors.execute(job).ok and len(calls) == 2
    assert (tmp_path / "run" / "arithmetic.ipynb").exists()
    calls = _fake_launches(monkeypatch, ["RuntimeError: " + executors.KERNEL_START_FAILED] * 2)
    assert not executors.execute(job).ok and len(calls) == executors.START_ATTEMPTS == 2
    calls = _fake_launches(monkeypatch, ["ZeroDivisionError in cell 3", "ok"])  # a failing run is not retried
    out = executors.execute(job)
    assert not out.ok and "ZeroDivisionError" in out.error and len(calls) == 1
