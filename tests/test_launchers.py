"""Launchers on real engines (no mocks): ``local``, ``ray`` and ``slurm`` leave the same files.

The tiny grid: DIGITS, squeezenet (by far the fastest architecture to train) healthy, with fault 1
(trained) and with fault 10 (derived from the healthy weights), one epoch, 20 attacked inputs per
split, through the three per-version steps: train (+ derive), fit, cache. The session's reference
pipeline (``conftest.pipeline``, in process) ran it with ``local``. Each engine runs the whole grid but fault 1
(``EQUAL_GRID``: a trained and a derived version, each step once), and every run is compared with the reference
file by file (checkpoint tensors, metadata without timings, KDE arrays, cache arrays
and figures byte for byte). Every run uses default flags (but the pretend GPUs a Ray job asks for):
no thread count is forced anywhere; each job computes with ``--threads``, the same on every launcher.

Ray and Slurm run inside the session's loopback-only network namespace (``tests/cluster.py``,
fixtures ``ray_cluster`` and ``slurm_cluster``), and so do the drivers under test. Where an engine is
missing, its tests are skipped with the fixture's reason. Wall times of the grid per launcher are
printed (``pytest -s``) and kept in ``WALL_TIMES``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster import kill_pid
from conftest import (
    APPENDED_ARCHITECTURE,
    RAY_GROUP,
    REPO,
    SCRIPT_ENV,
    SLURM_GROUP,
    Workspace,
    assert_usage_error,
    repository_copy,
)
from reliability_tools import assert_same_file, is_partial

pytestmark = pytest.mark.slow

STEPS = ("train", "fit", "cache")
VERSIONS = ("squeezenet_DIGITS", "squeezenet_DIGITS_bug1", "squeezenet_DIGITS_bug10")
SQUEEZENETS = ["--models", "squeezenet", "--bugs", "0", "1", "10"]
GRID = {"train": [*SQUEEZENETS, "--epochs", "1"], "fit": SQUEEZENETS, "cache": SQUEEZENETS}
#: the grid each engine runs whole and compares with local, file by file: one trained version and one derived from
#: it (a test-set fault), every step and both kinds of train job once; the jobs side by side are tested on
#: ``TRAINED`` (a worker killed mid-job, a packed array task, two local launches)
EQUAL_VERSIONS = (VERSIONS[0], VERSIONS[2])
ONE_TRAINED = ["--models", "squeezenet", "--bugs", "0", "10"]
EQUAL_GRID = {"train": [*ONE_TRAINED, "--epochs", "1"], "fit": ONE_TRAINED, "cache": ONE_TRAINED}
TRAINED = ["--models", "squeezenet", "--bugs", "0", "1"]  # the two trained versions: one job per CPU of the cluster
#: no GPUs: Ray reuses a worker process for the next job (with GPUs every job gets a fresh process, which imports
#: torch again: about 7 s of CPU a job; the pool's actors on the pretend GPUs are tested on their own, below)
RAY_CPU_FLAGS = ["--launcher", "ray", "--gpus-per-job", "0"]
WALL_TIMES: dict[str, float] = {}


def launched(rel: str) -> bool:
    """A file :data:`EQUAL_GRID`'s three steps write (the reference pipeline holds more): squeezenet's, but not
    fault 1's."""
    name = Path(rel).name
    return ("squeezenet" in name and not re.search(r"bug1(?!\d)", name)) or name == "DIGITS_ground_truth.npy"


def assert_same_as(ws: Workspace, reference: Workspace, only: tuple[str, ...] = ()) -> list[str]:
    """``ws`` holds the reference's files of :data:`EQUAL_GRID` (those under ``only``, if given), each equal, and
    no temporary file; returns them."""
    want = [rel for rel in reference.files() if (rel.startswith(only) if only else launched(rel))]
    got = [rel for rel in ws.files() if not only or rel.startswith(only)]
    assert not [rel for rel in got if is_partial(Path(rel).name)], got
    assert got == want
    for rel in want:
        assert_same_file(ws.root / rel, reference.root / rel)
    return want


def copy_models(reference: Workspace, destination: Path) -> Workspace:
    """A workspace with the reference's trained squeezenet versions only (checkpoints, metadata, loss curves)."""
    shutil.copytree(reference.model, destination / "model",
                    ignore=shutil.ignore_patterns(".locks", "densenet*"))
    return Workspace(destination)


def run_in_ns(ns, script: str, args, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    from conftest import script_file

    return ns.run([sys.executable, REPO / script_file(script), *args], env={**SCRIPT_ENV, **env}, timeout=timeout,
                  cwd=REPO)


def run_grid(ns, ws: Workspace, launcher_flags, env: dict) -> list[subprocess.CompletedProcess]:
    """:data:`EQUAL_GRID`'s three steps with ``launcher_flags``."""
    results = []
    for script in STEPS:
        result = run_in_ns(ns, script, [*ws.argv(script, grid=EQUAL_GRID[script]), *launcher_flags], env)
        assert result.returncode == 0, f"{script}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        results.append(result)
    return results


def statuses(stdout: str) -> dict[str, str]:
    """``version -> status`` from a script's table(s)."""
    table = {}
    for line in stdout.splitlines():
        key = line.split(" ", 1)[0]
        if key.startswith("squeezenet_DIGITS"):
            table[key] = line.split("  ")[-1].strip()
    return table


@pytest.fixture(scope="module")
def reference(pipeline) -> Workspace:
    """The local run of the tiny grid: the session's pipeline (which ran it in process, with more)."""
    return pipeline


# ---------------------------------------------------------------------------------------------
# ray
# ---------------------------------------------------------------------------------------------

@RAY_GROUP
def test_ray_grid_equals_local(reference, loopback_ns, ray_cluster, tmp_path):
    ws = Workspace(tmp_path / "ray")
    started = time.monotonic()
    results = run_grid(loopback_ns, ws, [*RAY_CPU_FLAGS, "--ray-address", ray_cluster.address], ray_cluster.auth_env)
    WALL_TIMES["ray"] = time.monotonic() - started
    print(f"\ntiny grid, --launcher ray ({ray_cluster.address}): {WALL_TIMES['ray']:.1f} s")
    assert statuses(results[0].stdout) == {VERSIONS[0]: "trained", VERSIONS[2]: "evaluated"}
    assert set(statuses(results[2].stdout).values()) == {"cached"}
    equal = assert_same_as(ws, reference)
    print(f"equal to local, file by file ({len(equal)}): {' '.join(equal)}")


@RAY_GROUP
def test_an_architecture_appended_to_model_manager_trains_on_ray(loopback_ns, ray_cluster, tmp_path):
    """The paper's habit on Ray: the workers import the repository the driver runs from (a copy here, with a
    registration appended to its ModelManager.py), so they know the architecture it adds."""
    copy = repository_copy(tmp_path / "repo", APPENDED_ARCHITECTURE)
    model_root = tmp_path / "model"
    result = loopback_ns.run([sys.executable, copy / "main_train_model.py", "--models", "edited", "--bugs", "0",
                              "--epochs", "1", "--device", "cpu", "--model-root", model_root, "--quiet",
                              *RAY_CPU_FLAGS, "--ray-address", ray_cluster.address],
                             env={**SCRIPT_ENV, **ray_cluster.auth_env}, timeout=300, cwd=copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("edited_DIGITS"))
    assert row.endswith("  trained"), result.stdout
    metadata = json.loads((model_root / "edited_DIGITS.json").read_text())
    assert metadata["model"] == "edited" and 0.0 <= metadata["val_acc"] <= 1.0
    assert (model_root / "edited_DIGITS.pth").is_file()


@RAY_GROUP
def test_ray_cluster_wanting_a_token_is_one_clear_line(reference, loopback_ns, ray_cluster, tmp_path):
    """The session cluster demands a token; a launch given its address but not RAY_AUTH_MODE=token (Ray does not
    turn tokens on for an explicit address) stops with exit 2 and one line saying what to set, writing nothing."""
    ws = copy_models(reference, tmp_path / "token")
    result = run_in_ns(loopback_ns, "fit",
                       [*ws.argv("fit", grid=GRID["fit"]), *RAY_CPU_FLAGS, "--ray-address", ray_cluster.address],
                       # Ray retries a refused connection once a second, 20 times unless told fewer
                       {"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN_PATH": None, "RAY_gcs_server_port_wait_time_s": "3"},
                       timeout=180)
    assert_usage_error(result, "RAY_AUTH_MODE=token", engine_lines=True)
    assert not ws.kdes.exists() or not any(ws.kdes.iterdir())


@RAY_GROUP
def test_ray_corrupt_input_fails_alone(reference, loopback_ns, ray_cluster, tmp_path):
    ws = copy_models(reference, tmp_path / "corrupt")
    ws.checkpoint(bug=1).unlink()
    ws.checkpoint(bug=1).write_bytes(b"not a checkpoint" * 64)
    result = run_in_ns(loopback_ns, "fit",
                       [*ws.argv("fit", grid=GRID["fit"]), *RAY_CPU_FLAGS, "--ray-address", ray_cluster.address],
                       ray_cluster.auth_env)
    print(f"\ncorrupt checkpoint, fit step with --launcher ray (exit {result.returncode}):\n{result.stdout}"
          f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}")
    assert_usage_error(result, "squeezenet_DIGITS_bug1.pth", engine_lines=True)
    table = statuses(result.stdout)
    assert table[VERSIONS[0]] == "fitted" and table[VERSIONS[1]].startswith("FAILED: ")
    assert "squeezenet_DIGITS_bug1.pth" in table[VERSIONS[1]]
    assert_same_as(ws, reference, only=("info/kde_results/squeezenet_DIGITS_c", "info/kde_results/squeezenet_DIGITS_w",
                                        "out/figures/kde_squeezenet_DIGITS.png"))
    assert not list((ws.root / "info" / "kde_results").glob("squeezenet_DIGITS_bug1_*"))


def test_unreachable_ray_address_is_one_line_at_once(reference, loopback_ns, tmp_path):
    """Nothing listens at the address: one ``error:`` line naming ``--ray-address``, exit 2, within seconds (Ray
    itself would retry for minutes), and nothing written."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray not installed: pip install -r envs_requirements/requirements-cluster.txt")
    ws = copy_models(reference, tmp_path / "unreachable")
    started = time.monotonic()
    result = run_in_ns(loopback_ns, "cache", [*ws.argv("cache", grid=GRID["cache"]), "--launcher", "ray",
                                              "--ray-address", "127.0.0.1:9"], {"RAY_ADDRESS": None}, timeout=120)
    elapsed = time.monotonic() - started
    message = assert_usage_error(result, "--ray-address 127.0.0.1:9", "nothing answers there", engine_lines=True)
    print(f"\nunreachable --ray-address: exit {result.returncode} after {elapsed:.1f} s: error: {message}")
    assert elapsed < 30
    assert not ws.cached.exists() or not any(ws.cached.iterdir())


REAL_BUG_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from launchers import LAUNCHERS, LaunchSettings
    from launchers.running import launch_and_report
    from pipeline.jobs import Job, JobSettings, Roots
    from storage.settings import AttackSettings

    out = sys.argv[2]
    roots = Roots(model=out + "/model", info=out + "/info", output=out)
    # a setting no command line can produce: the dataset sampler raises TypeError, a real bug
    settings = JobSettings(quiet=True, attack=AttackSettings(max_inputs="twelve"))
    jobs = [Job("cache", "DIGITS", "squeezenet", 0, roots, settings)]
    engine = dict(cpus_per_job=1, gpus_per_job=0) if sys.argv[1] == "ray" else dict(slurm_time=5,
                                                                                     slurm_cpus_per_job=1)
    options = LAUNCHERS.get_class(sys.argv[1]).options(**engine)
    sys.exit(launch_and_report(jobs, LaunchSettings(sys.argv[1], True, options)))
""").format(repo=str(REPO))


def run_real_bug(ns, launcher: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """A job that raises (not a UsageError): a failed row with the exception's one line and a log; exit 1."""
    result = ns.python(REAL_BUG_DRIVER.replace("sys.argv[1]", repr(launcher)).replace("sys.argv[2]",
                                                                                    repr(str(tmp_path / "out"))),
                       env={**SCRIPT_ENV, **env}, timeout=180, check=False)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    row = [line for line in result.stdout.splitlines() if line.startswith("squeezenet_DIGITS")]
    assert len(row) == 1 and "FAILED: TypeError: " in row[0] and " [log: " in row[0], result.stdout
    log = Path(row[0].split("[log: ", 1)[1].rstrip("]"))
    assert log.is_file() and "TypeError" in log.read_text()
    return result


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@RAY_GROUP
def test_ray_local_cluster_job_raising_is_a_bug(loopback_ns, tmp_path):
    """No --ray-address and no RAY_ADDRESS: the launch starts its own Ray (in the namespace), reports the
    job's exception as a failure (exit 1), and leaves no Ray process behind."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray not installed: pip install -r envs_requirements/requirements-cluster.txt")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's Unix sockets live in it
    try:
        # HOME: a new local cluster writes ~/.ray/auth_token (Ray 2.5x+ token authentication), which would
        # then be offered to, and refused by, the session's `ray start` cluster (started without tokens)
        home = tmp_path / "home"
        home.mkdir()
        run_real_bug(loopback_ns, "ray", {"RAY_ADDRESS": None, "RAY_TMPDIR": ray_tmp, "HOME": home}, tmp_path)
        deadline = time.monotonic() + 20
        while _processes_mentioning(str(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_mentioning(str(ray_tmp))
        for pid in left:
            kill_pid(pid)
        assert not left, "the launch left its Ray processes running"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


#: the title Ray gives a pool actor's process while it runs a job (``ray::<class>.<method>``)
RUNNING_ACTOR = "ray::JobWorker.run"


def _ray_task_processes(root_pid: int) -> list[int]:
    """Processes descended from ``root_pid`` whose title says they run a job (a pool actor in ``run``)."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    return [pid for pid, title in titles.items() if title.startswith(RUNNING_ACTOR) and descends(pid)]


@RAY_GROUP
def test_ray_worker_killed_mid_job_is_retried(reference, loopback_ns, ray_cluster, tmp_path):
    """SIGKILL a pool actor while it runs a job: Ray restarts the actor, the job is retried on it and the cache
    step ends as if nothing happened, its files equal to local's."""
    ws = copy_models(reference, tmp_path / "killed")
    shutil.copytree(reference.kdes, ws.kdes)
    command = [sys.executable, REPO / "main_cache_test_distances.py", *ws.argv("cache", grid=TRAINED), *RAY_CPU_FLAGS,
               "--ray-address", ray_cluster.address]
    process = loopback_ns.popen(command, env={**SCRIPT_ENV, **ray_cluster.auth_env}, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, seen, after = None, {}, []
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        for pid in _ray_task_processes(ray_cluster.process.pid):
            first = seen.setdefault(pid, time.monotonic())
            # the actor imported everything before its first job, so a job running for 0.2 s is under way
            if killed is None and time.monotonic() - first > 0.2:
                os.kill(pid, signal.SIGKILL)
                killed, before = pid, set(seen)
                break
            if killed is not None and pid != killed and pid not in after:
                after.append(pid)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=240)
    print(f"\nSIGKILLed the Ray actor {killed} mid-job; jobs ran afterwards in actor process(es) {after}; the cache "
          f"step (exit {process.returncode}):\n{stdout}")
    assert killed is not None, "no running job found to kill"
    assert set(after) - before, "no restarted actor ran the job again"
    assert process.returncode == 0, stdout + stderr[-3000:]
    assert statuses(stdout) == {VERSIONS[0]: "cached", VERSIONS[1]: "cached"}
    cached = "info/test_information_cached/DIGITS_"
    assert_same_as(ws, reference,
                   only=(f"{cached}ground_truth", f"{cached}squeezenet_bug0_", f"{cached}squeezenet_bug1_"))


ISOLATION_DRIVER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import ray
    from launchers import ray_pool
    from launchers import LaunchSettings
    from pipeline.jobs import Job, JobSettings, Roots

    out = {out!r}
    roots = Roots(model=out + "/model", info=out + "/info", output=out)
    jobs = [Job("cache", "DIGITS", "squeezenet", bug, roots, JobSettings(quiet=True)) for bug in range(8)]
    ray_pool._connect_ray(ray, None)
    report = {{}}
    for gpus in (1.0, 2.0, 0.5):
        pool = ray_pool.RayPool(ray, jobs, LaunchSettings("ray", True, ray_pool.RayOptions(cpus_per_job=0.5,
                                                                                           gpus_per_job=gpus)))
        # the pool's actors all up at once (in a launch, fast jobs may all be done before the last actor is)
        actors = [pool.actor_class.remote() for _ in range(pool.size)]
        together = ray.get([actor.ready.remote() for actor in actors])
        for actor in actors:
            ray.kill(actor, no_restart=True)
        outcomes = pool.run() if gpus == 1.0 else []  # then a launch: where each job ran
        report[str(gpus)] = dict(size=pool.size, together=together, ran=[o.worker for o in outcomes])
    ray.shutdown()
    print(json.dumps(report))
""")


def _gpus_of(identity: str) -> tuple[str, frozenset]:
    """``(pid, GPUs)`` from ``launchers.common.worker_identity()``'s text."""
    assert " GPUs " in identity, identity
    where, gpus = identity.split(" GPUs ")
    return where, frozenset(gpus.split(","))


def assert_isolated(actors: dict, gpus: float) -> None:
    """Each actor (pid -> GPUs it sees) sees its share: whole GPUs never shared, a half GPU by at most two."""
    assert all(devices <= {"0", "1", "2", "3"} for devices in actors.values()), actors
    assert all(len(devices) == max(1, int(gpus)) for devices in actors.values()), actors
    per_gpu = [sum(gpu in devices for devices in actors.values()) for gpu in "0123"]
    assert max(per_gpu) <= (2 if gpus < 1 else 1), actors


@RAY_GROUP
def test_ray_actors_see_only_their_gpus(loopback_ns, ray_cluster, tmp_path):
    """A pool's actors on the cluster's four pretend GPUs, at 1, 2 and 0.5 GPUs per job: all of them up at once,
    each sees exactly the GPUs Ray gave it (``CUDA_VISIBLE_DEVICES``, read in the actor's process), whole GPUs
    never shared, a half GPU by at most two; then, at 1 GPU, in a launch every job ran in an actor so isolated."""
    result = loopback_ns.python(ISOLATION_DRIVER.format(repo=str(REPO), out=str(tmp_path / "out")),
                                env={**SCRIPT_ENV, **ray_cluster.env}, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("\nRay pool actors on 4 pretend GPUs (2 CPUs, 0.5 CPU per job):")
    for gpus, seen in report.items():
        print(f"  --gpus-per-job {gpus}: {seen['size']} actors up at once: " + "; ".join(seen["together"]))
        together = dict(_gpus_of(identity) for identity in seen["together"])
        assert len(together) == seen["size"] == {"1.0": 4, "2.0": 2, "0.5": 4}[gpus]
        assert_isolated(together, float(gpus))
        if gpus == "1.0":
            ran = dict(_gpus_of(identity) for identity in seen["ran"])
            print("    a launch of 8 jobs ran in: " + "; ".join(f"{pid} GPUs {','.join(sorted(devices))}"
                                                              for pid, devices in ran.items()))
            assert len(seen["ran"]) == 8 and len(ran) <= seen["size"]
            assert_isolated(ran, float(gpus))


# ---------------------------------------------------------------------------------------------
# slurm
# ---------------------------------------------------------------------------------------------

def slurm_flags(cluster) -> list[str]:
    return ["--launcher", "slurm", "--slurm-partition", cluster.partition, "--slurm-time", "10",
            "--slurm-gpus-per-job", "1"]


@SLURM_GROUP
def test_slurm_grid_equals_local(reference, loopback_ns, slurm_cluster, tmp_path):
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit not installed: pip install -r envs_requirements/requirements-cluster.txt")
    ws = Workspace(tmp_path / "slurm")
    started = time.monotonic()
    results = run_grid(loopback_ns, ws, slurm_flags(slurm_cluster), slurm_cluster.env)
    WALL_TIMES["slurm"] = time.monotonic() - started
    print(f"\ntiny grid, --launcher slurm: {WALL_TIMES['slurm']:.1f} s")
    assert statuses(results[0].stdout) == {VERSIONS[0]: "trained", VERSIONS[2]: "evaluated"}
    equal = assert_same_as(ws, reference)
    print(f"equal to local, file by file ({len(equal)}): {' '.join(equal)}")
    assert list((ws.out / "logs" / "slurm").iterdir())  # submitit's folders, one per job

    # --no-wait: submitted, ids printed, exit 0; the array is then cancelled by its id
    result = run_in_ns(loopback_ns, "cache", [*ws.argv("cache", grid=EQUAL_GRID["cache"]),
                                              *slurm_flags(slurm_cluster), "--no-wait"], slurm_cluster.env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = statuses(result.stdout)
    assert set(rows) == set(EQUAL_VERSIONS) and all(s.startswith("submitted: Slurm job ") for s in rows.values()), \
        rows
    arrays = {s.rsplit(" ", 1)[1] for s in rows.values()}  # the two jobs share one array task (auto packing)
    assert len(arrays) == 1 and f"cache {arrays.pop().split('_')[0]}" in result.stderr, result.stderr[-2000:]
    ids = sorted({s.rsplit(" ", 1)[1].split("_")[0] for s in rows.values()})
    loopback_ns.run(["scancel", *ids], env=slurm_cluster.env, check=True)
    deadline = time.monotonic() + 60
    while loopback_ns.run(["squeue", "-h", "-j", ",".join(ids)], env=slurm_cluster.env).stdout.strip():
        assert time.monotonic() < deadline, "the cancelled --no-wait jobs still run"
        time.sleep(0.5)


PACKED_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from launchers import LaunchSettings
    from launchers.running import launch_and_report
    from launchers.slurm_arrays import SlurmOptions
    from pipeline.jobs import Job, JobSettings, Roots
    from storage.settings import AttackSettings

    out = {out!r}
    roots = Roots(model=out + "/model", info=out + "/info", output=out)
    # first a job that raises (a setting no command line can produce: the dataset sampler raises TypeError, a
    # real bug), then two that work, all three in one array task
    broken = JobSettings(quiet=True, attack=AttackSettings(max_inputs="twelve"))
    working = JobSettings(quiet=True, attack=AttackSettings(max_inputs=20), device="cpu")
    jobs = [Job("cache", "DIGITS", "squeezenet", 10, roots, broken),
            *(Job("cache", "DIGITS", "squeezenet", bug, roots, working) for bug in (0, 1))]
    settings = LaunchSettings("slurm", True, SlurmOptions(slurm_time=5, slurm_cpus_per_job=1, slurm_jobs_per_task=3))
    sys.exit(launch_and_report(jobs, settings))
""")


@SLURM_GROUP
def test_slurm_packed_task_reports_each_job(reference, loopback_ns, slurm_cluster, tmp_path):
    """Three jobs in one array task, the first raising: that job's row says why (the exception's line, the task's
    log, which holds the traceback), exit 1; the two after it still ran, their files equal to local's."""
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit not installed: pip install -r envs_requirements/requirements-cluster.txt")
    ws = copy_models(reference, tmp_path / "packed")
    result = loopback_ns.python(PACKED_DRIVER.format(repo=str(REPO), out=str(ws.root)),
                                env={**SCRIPT_ENV, **slurm_cluster.env}, timeout=180, check=False)
    print(f"\none Slurm array task, three jobs, the first raising (exit {result.returncode}):\n{result.stdout}")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    table = statuses(result.stdout)
    assert table[VERSIONS[0]] == table[VERSIONS[1]] == "cached", table
    assert table[VERSIONS[2]].startswith("FAILED: TypeError: ") and " [log: " in table[VERSIONS[2]], table
    log = Path(table[VERSIONS[2]].split("[log: ", 1)[1].rstrip("]"))
    assert log.is_file() and "Traceback" in log.read_text() and "TypeError" in log.read_text()
    assert len(list(log.parent.parent.rglob("*_result.pkl"))) == 1  # one array task ran the three jobs
    cached = "info/test_information_cached/DIGITS_"
    assert_same_as(ws, reference,
                   only=(f"{cached}ground_truth", f"{cached}squeezenet_bug0_", f"{cached}squeezenet_bug1_"))


# ---------------------------------------------------------------------------------------------
# local: two launches at once, and a missing engine
# ---------------------------------------------------------------------------------------------

def test_two_local_launches_train_each_version_once(reference, tmp_path):
    pytest.importorskip("filelock", reason="the per-version lock needs filelock (requirements-cluster.txt)")
    ws = Workspace(tmp_path / "twice")
    command = [sys.executable, REPO / "main_train_model.py", *ws.argv("train", "--epochs", "1", grid=TRAINED),
               "--launcher", "local"]
    env = {**os.environ, **SCRIPT_ENV}
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: subprocess.run([str(c) for c in command], env=env, cwd=REPO, text=True,
                                                      capture_output=True, timeout=240), range(2)))
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    table = [s for run in runs for s in statuses(run.stdout).values()]
    print(f"\ntwo local launches at once: {table}")
    assert sorted(table) == ["skipped (up to date)"] * 2 + ["trained"] * 2, [run.stdout for run in runs]
    for bug in (0, 1):
        assert_same_file(ws.checkpoint(bug=bug), reference.checkpoint(bug=bug))


@pytest.mark.parametrize("launcher, module", [("ray", "ray"), ("slurm", "submitit")])
def test_missing_engine_is_one_line(launcher, module, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / f"{module}.py").write_text(f"raise ImportError('No module named {module}')\n")
    env = {**os.environ, **SCRIPT_ENV, "PYTHONPATH": str(fake)}
    result = subprocess.run([sys.executable, str(REPO / "main_train_model.py"), "--launcher", launcher,
                             "--model-root", str(tmp_path / "model")], env=env, cwd=REPO, text=True,
                            capture_output=True, timeout=120)
    assert_usage_error(result, f"--launcher {launcher}", module,
                       "pip install -r envs_requirements/requirements-cluster.txt")
    assert not (tmp_path / "model").exists()
