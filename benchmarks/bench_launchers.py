"""What a launcher costs on top of the work: the tiny grid's wall time per launcher, and the per-job overhead.

The tiny grid is the launcher tests' (DIGITS; squeezenet healthy, with fault 1 trained and fault 10 derived;
one epoch; 20 attacked inputs per split) through its three scripts: train (+ derive), fit, cache; ``--bugs``
widens it (more jobs per launch, over which a launch's start-up is spread). Each
launcher runs it in a fresh workspace, with the same flags (one thread per job, ``--device cpu``), inside
one loopback-only network namespace that also holds a one-node Ray (2 CPUs, 4 pretend GPUs) and a one-node
Slurm (all CPUs, 4 pretend GPUs) started here, as in the tests (``tests/cluster.py``):

  local       in process, one job after another (the reference)
  ray         ``--gpus-per-job 0.25`` (GPU jobs: the case that started a process per job before issue 19)
  ray-cpu     ``--gpus-per-job 0``
  slurm       ``--slurm-gpus-per-job 1`` (the engine's default packing)

Per launcher: the grid's wall time (the three scripts' processes, interpreter start included), its ratio to
``local`` of the same round, the time inside ``launchers.launch``, the jobs' time as the job measured it
(``Outcome.seconds``; in a fresh worker it includes the imports and dataset loads a job triggers) and the
per-job overhead

    (time in launch − the same jobs' time in process (local, same round) / slots) / jobs

where ``slots`` is how many jobs the launcher can run at once here (1 for ``local``, the cluster's 2 CPUs at
one CPU per job otherwise): the wall time a job costs beyond its share of the work, start-up included.
Then the cache step is run again twice, everything up to date (a job is a freshness check of milliseconds),
for the first version alone and for all of them: the difference of the two launch times per extra job is the
marginal overhead, what a job costs once the launch's workers are up.
Medians over ``--rounds`` rounds (launchers interleaved within a round); ``--json`` keeps every round.

``--repo`` measures another checkout's launchers with this harness (its scripts, its ``launchers.launch``):
how the before/after figures in docs/results.md were taken, e.g. with ``git worktree add /tmp/before <rev>``.

    python benchmarks/bench_launchers.py [--rounds 3] [--launchers local ray ray-cpu slurm] [--repo PATH]
        [--bugs 0 1 2 3 4 5 6 7 8 9 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from cluster import LoopbackNamespace, RayCluster, SlurmCluster, loopback_available, slurm_available  # noqa: E402

#: the three scripts of the tiny grid, with their flags (roots are added per workspace)
STEPS = [
    ("main_train_model", ["--epochs", "1"], ("data", "model")),
    ("main_train_DeepFailGuard", ["--max-inputs", "20"], ("data", "model", "info")),
    ("main_cache_test_distances", ["--max-inputs", "20"], ("data", "model", "info")),
]
#: the launcher tests' versions (``--bugs``' default)
TINY_BUGS = ("0", "1", "10")
#: runs one script in process with ``launchers.launch`` timed; writes what it measured as JSON
DRIVER = """
import importlib, json, sys, time
repo, script, record_path = sys.argv[1:4]
sys.path.insert(0, repo)
import launchers
real_launch = launchers.launch
record = {}
def timed_launch(jobs, options):
    started = time.perf_counter()
    outcomes = real_launch(jobs, options)
    record.update(launch_s=time.perf_counter() - started, jobs_s=sum(o.seconds for o in outcomes), jobs=len(jobs),
                  failed=[o.job.name for o in outcomes if o.status == "failed"])
    return outcomes
launchers.launch = timed_launch
status = importlib.import_module(script).main(sys.argv[4:])
with open(record_path, "w") as handle:
    json.dump(record, handle)
sys.exit(status or 0)
"""
SCRIPT_ENV = {"PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
CLUSTER_CPUS = 2


def launcher_flags(name: str, ray: RayCluster | None, slurm: SlurmCluster | None) -> tuple[list[str], dict, int]:
    """The flags, environment and parallel slots of one launcher."""
    if name == "local":
        return ["--launcher", "local"], {}, 1
    if name in ("ray", "ray-cpu"):
        gpus = "0.25" if name == "ray" else "0"
        return ["--launcher", "ray", "--gpus-per-job", gpus, "--ray-address", ray.address], {}, CLUSTER_CPUS
    return (["--launcher", "slurm", "--slurm-partition", slurm.partition, "--slurm-time", "10",
             "--slurm-gpus-per-job", "1"], slurm.env, CLUSTER_CPUS)


def run_step(ns: LoopbackNamespace, repo: Path, workspace: Path, step: int, bugs, flags: list[str],
             env: dict) -> dict:
    """One script of the grid in ``workspace``: its process wall time and what its launch measured."""
    script, step_flags, roots = STEPS[step]
    record = workspace / f"{script}.json"
    root_flags = [a for root in roots for a in (f"--{root}-root", str(workspace / root))]
    argv = ["--models", "squeezenet", "--bugs", *bugs, *step_flags, *root_flags, "--output", str(workspace / "out"),
            "--device", "cpu", "--quiet", *flags]
    started = time.monotonic()
    result = ns.run([sys.executable, "-c", DRIVER, repo, script, record, *argv], env={**SCRIPT_ENV, **env},
                    timeout=900, cwd=repo)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(flags)} exited {result.returncode}:\n{result.stdout[-2000:]}"
                           f"\n{result.stderr[-3000:]}")
    measured = json.loads(record.read_text())
    if measured["failed"]:
        raise RuntimeError(f"{script}: jobs failed: {measured['failed']}")
    return dict(measured, wall_s=wall)


def run_grid(ns: LoopbackNamespace, repo: Path, workspace: Path, bugs, flags: list[str], env: dict) -> dict:
    """The three scripts in ``workspace`` (summed: process wall time, launch time, jobs' time, jobs); then the
    cache step again, all of it up to date, for one version and for all: the launch time a job adds once
    workers are up (``marginal_s``)."""
    total = {"wall_s": 0.0, "launch_s": 0.0, "jobs_s": 0.0, "jobs": 0}
    for step in range(len(STEPS)):
        measured = run_step(ns, repo, workspace, step, bugs, flags, env)
        for key in total:
            total[key] += measured[key]
    one = run_step(ns, repo, workspace, len(STEPS) - 1, bugs[:1], flags, env)
    every = run_step(ns, repo, workspace, len(STEPS) - 1, bugs, flags, env)
    total["marginal_s"] = (every["launch_s"] - one["launch_s"]) / (every["jobs"] - one["jobs"])
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--launchers", nargs="+", default=["local", "ray", "ray-cpu", "slurm"],
                        choices=["local", "ray", "ray-cpu", "slurm"])
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose scripts and launchers run")
    parser.add_argument("--bugs", nargs="+", default=list(TINY_BUGS),
                        help="the squeezenet versions of the grid (default: the launcher tests' 0 1 10)")
    parser.add_argument("--json", type=Path, default=None, help="write every round's measurements here")
    args = parser.parse_args(argv)
    ok, reason = loopback_available()
    if not ok:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if "slurm" in args.launchers and not slurm_available()[0]:
        print(f"note: slurm left out: {slurm_available()[1]}", file=sys.stderr)
        args.launchers.remove("slurm")
    if "local" not in args.launchers:
        args.launchers.insert(0, "local")
    repo = args.repo.resolve()
    rev = os.popen(f"git -C {repo} rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    print(f"launchers of {repo} ({rev}); squeezenet versions {' '.join(args.bugs)}; {os.cpu_count()} CPUs; "
          f"{args.rounds} round(s)", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in args.launchers}
    with LoopbackNamespace() as ns:
        ray = RayCluster(ns, num_cpus=CLUSTER_CPUS, num_gpus=4, env={"CUDA_VISIBLE_DEVICES": None}) \
            if any(name.startswith("ray") for name in args.launchers) else None
        slurm = SlurmCluster(ns, gpus=4) if "slurm" in args.launchers else None
        try:
            for round_ in range(args.rounds):
                for name in args.launchers:
                    flags, env, slots = launcher_flags(name, ray, slurm)
                    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
                        measured = run_grid(ns, repo, Path(folder), args.bugs, flags, env)
                    measured["slots"] = slots
                    rows[name].append(measured)
                    print(f"  round {round_ + 1} {name:<8} grid {measured['wall_s']:6.1f} s, in launch "
                          f"{measured['launch_s']:6.1f} s, jobs' own {measured['jobs_s']:6.1f} s", flush=True)
        finally:
            if slurm is not None:
                slurm.stop()
            if ray is not None:
                ray.stop()
    if args.json:
        args.json.write_text(json.dumps({"repo": str(repo), "rev": rev, "rounds": rows}, indent=1))
    print_table(rows)
    return 0


def print_table(rows: dict[str, list[dict]]) -> None:
    reference = rows["local"]
    print(f"\n{'launcher':<9} {'grid s':>7} {'x local':>8} {'launch s':>9} {'jobs s':>7} {'jobs':>5} "
          f"{'overhead/job s':>15} {'marginal/job s':>15}   (medians)")
    for name, runs in rows.items():
        ratio = statistics.median(run["wall_s"] / ref["wall_s"] for run, ref in zip(runs, reference))
        overhead = statistics.median((run["launch_s"] - ref["jobs_s"] / run["slots"]) / run["jobs"]
                                     for run, ref in zip(runs, reference))
        median = {key: statistics.median(run[key] for run in runs) for key in ("wall_s", "launch_s", "jobs_s")}
        marginal = statistics.median(run["marginal_s"] for run in runs)
        print(f"{name:<9} {median['wall_s']:7.1f} {ratio:8.2f} {median['launch_s']:9.1f} {median['jobs_s']:7.1f} "
              f"{runs[0]['jobs']:5d} {overhead:15.2f} {marginal:15.3f}")


if __name__ == "__main__":
    sys.exit(main())
