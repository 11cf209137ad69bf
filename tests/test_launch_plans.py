"""How the engines lay a launch out, without an engine: Slurm's array tasks and arrays, Ray's pool size.

The launches the grid's scripts make (a train launch: trainings and the derived versions that need the
healthy one; a fit or cache launch: independent jobs) and random ones are packed and checked against what
``run_packed`` and the arrays' ``afterany`` rely on: every job exactly once, in the order given inside its
task, and every job it needs either earlier in its own task or in a task of an earlier array.
"""

from __future__ import annotations

import argparse
import random

import pytest
from conftest import assert_usage_error, run_in_process

from launchers import options, ray_pool, slurm_arrays
from launchers.common import worker_identity
from pipeline import jobs as jobs_module
from pipeline import runner
from pipeline.jobs import FAILED, Job, Outcome
from storage.settings import Roots
from utils import UsageError


def train_launch(roots: Roots, models=("squeezenet",), trained=range(10), derived=(10, 11, 12)) -> list[Job]:
    """What main_train_model.py launches for these versions: the trainings, then the derived versions."""
    trainings = [Job("train", "DIGITS", model, bug, roots) for model in models for bug in trained]
    return trainings + [Job("derive", "DIGITS", model, bug, roots) for model in models for bug in derived]


def check_plan(jobs: list[Job], tasks: list[list[int]], per_task: int | None) -> list[int]:
    """The invariants of a plan; returns its arrays (waves)."""
    flat = [index for task in tasks for index in task]
    assert sorted(flat) == list(range(len(jobs)))
    waves = slurm_arrays.array_waves(slurm_arrays.task_needs(jobs, tasks))
    task_of = {index: t for t, task in enumerate(tasks) for index in task}
    for t, task in enumerate(tasks):
        assert task == sorted(task)
        assert len(task) <= (per_task or slurm_arrays.AUTO_JOBS_PER_TASK)
        if per_task is None:
            assert sum(slurm_arrays._is_training(jobs[i]) for i in task) <= 1
        for index in task:
            for needed in (i for i in range(len(jobs)) if jobs[index].depends_on(jobs[i])):
                assert (task_of[needed] == t and needed < index) or waves[task_of[needed]] < waves[t]
    return waves


def test_auto_packs_a_training_with_the_versions_derived_from_it(tmp_path):
    jobs = train_launch(Roots(model=str(tmp_path)), models=("squeezenet", "alexnet"))
    tasks = slurm_arrays.pack_tasks(jobs)
    named = [[jobs[i].name.split(" ", 1)[1].removeprefix("squeezenet_").removeprefix("alexnet_") for i in task]
             for task in tasks]
    # per model: the healthy training with its three derived versions, then each faulty training alone
    assert len(tasks) == 20 and [len(task) for task in tasks].count(4) == 2
    assert named[0] == ["DIGITS", "DIGITS_bug10", "DIGITS_bug11", "DIGITS_bug12"]
    assert check_plan(jobs, tasks, None) == [0] * 20  # one array: nothing waits


def test_one_job_per_task_puts_the_derived_versions_in_a_second_array(tmp_path):
    jobs = train_launch(Roots(model=str(tmp_path)))
    tasks = slurm_arrays.pack_tasks(jobs, 1)
    assert sorted(tasks) == [[i] for i in range(13)]
    waves = check_plan(jobs, tasks, 1)
    assert {jobs[task[0]].bug: wave for task, wave in zip(tasks, waves)} == {bug: int(bug >= 10) for bug in range(13)}


def test_a_group_larger_than_a_task_is_split_in_order(tmp_path):
    jobs = train_launch(Roots(model=str(tmp_path)), trained=(0, 1))
    tasks = slurm_arrays.pack_tasks(jobs, 2)
    # train0 + derive10 | derive11, derive12 (wait for the first) | train1
    assert tasks == [[0, 2], [3, 4], [1]]
    assert check_plan(jobs, tasks, 2) == [0, 1, 0]


def test_independent_jobs_fill_tasks_of_the_limit(tmp_path):
    roots = Roots(model=str(tmp_path), info=str(tmp_path))
    jobs = [Job("cache", "DIGITS", "squeezenet", bug, roots) for bug in range(13)]
    assert slurm_arrays.pack_tasks(jobs) == [list(range(8)), list(range(8, 13))]
    assert slurm_arrays.pack_tasks(jobs, 5) == [list(range(5)), list(range(5, 10)), list(range(10, 13))]
    assert slurm_arrays.pack_tasks(jobs, 100) == [list(range(13))]


@pytest.mark.parametrize("seed", range(20))
def test_random_launches_keep_the_invariants(seed, tmp_path):
    rng = random.Random(seed)
    models = rng.sample(["squeezenet", "alexnet", "vgg16", "resnet50", "densenet121"], rng.randint(1, 3))
    jobs = train_launch(Roots(model=str(tmp_path)), models=models, trained=sorted(rng.sample(range(10), 4)),
                        derived=sorted(rng.sample((10, 11, 12), rng.randint(0, 3))))
    per_task = rng.choice([None, 1, 2, 3, 5])
    check_plan(jobs, slurm_arrays.pack_tasks(jobs, per_task), per_task)


def test_jobs_per_task_flag():
    assert options.jobs_per_task_flag("auto") is None
    assert options.jobs_per_task_flag("3") == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of jobs or 'auto'"):
            options.jobs_per_task_flag(bad)


def test_bad_jobs_per_task_is_one_line(tmp_path, capsys):
    result = run_in_process(capsys, "cache", "--slurm-jobs-per-task", "0", "--model-root", tmp_path / "model")
    assert_usage_error(result, "--slurm-jobs-per-task", "positive number of jobs or 'auto'")


@pytest.mark.parametrize("resources, cpus, gpus, jobs, size", [
    ({"CPU": 2.0, "GPU": 4.0}, 1.0, 0.25, 9, 2),  # the tests' cluster: CPUs bound
    ({"CPU": 2.0, "GPU": 4.0}, 0.5, 1.0, 9, 4),  # GPUs bound
    ({"CPU": 2.0, "GPU": 4.0}, 0.5, 2.0, 9, 2),
    ({"CPU": 16.0, "GPU": 8.0}, 1.0, 1.0, 3, 3),  # fewer jobs than slots
    ({"CPU": 0.3}, 0.1, 0.0, 9, 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats
    ({"CPU": 64.0, "GPU": 4.0}, 1.0, 0.3, 99, 13),
    ({"CPU": 8.0}, 1.0, 0.0, 99, 8),  # no GPU asked: GPUs do not count
])
def test_pool_size(resources, cpus, gpus, jobs, size):
    assert ray_pool.pool_size(resources, cpus, gpus, jobs) == size


def test_pool_size_refuses_a_job_that_fits_nowhere():
    with pytest.raises(UsageError, match=r"no job fits the Ray cluster \(2 CPUs, 0 GPUs\) at --cpus-per-job 1 "
                                         r"--gpus-per-job 1; ask for less per job"):
        ray_pool.pool_size({"CPU": 2.0}, 1.0, 1.0, 5)


def test_run_packed_reports_each_job_and_skips_what_needs_a_broken_one(tmp_path, monkeypatch, capfd):
    """The job that raises is a failed outcome with its traceback (also on stderr, the task's log); the one that
    needs it is not run; the independent one after it runs."""
    ran = []

    def train(job):
        ran.append(job.name)
        if job.bug == 0:
            raise RuntimeError("boom")
        return Outcome(job, jobs_module.DONE)

    monkeypatch.setitem(runner.RUNNERS, "train", train)
    monkeypatch.setitem(runner.RUNNERS, "derive", train)
    roots = Roots(model=str(tmp_path / "model"), info=str(tmp_path / "info"), output=str(tmp_path))
    jobs = train_launch(roots, trained=(0, 1), derived=(10,))  # train0, train1, derive10 (needs train0)
    outcomes = slurm_arrays.run_packed(jobs)
    assert ran == ["train squeezenet_DIGITS", "train squeezenet_DIGITS_bug1"]
    first, second, derived = outcomes
    assert (first.status, first.reason) == (FAILED, "RuntimeError: boom")
    assert "Traceback" in first.trace and 'raise RuntimeError("boom")' in first.trace
    assert second.status == jobs_module.DONE and not second.trace
    assert (derived.status, derived.reason) == (FAILED, "not run: train squeezenet_DIGITS failed")
    assert all(o.worker == worker_identity() for o in outcomes)
    assert "train squeezenet_DIGITS failed:\nTraceback" in capfd.readouterr().err


def test_worker_identity_names_the_gpus_only_when_restricted(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert " GPUs " not in worker_identity()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert worker_identity().endswith(" GPUs 2,3")
