"""The cluster test harness itself (tests/cluster.py): a loopback-only network namespace, a real
local Ray cluster and a real single-node Slurm in it, driven the way the launchers will be."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
from cluster import LoopbackNamespace, SlurmCluster, _alive, loopback_available, slurm_available
from conftest import RAY_GROUP, SLURM_GROUP

pytestmark = pytest.mark.slow


def last_json(text: str):
    return json.loads(text.strip().splitlines()[-1])


def test_namespace_has_only_loopback(loopback_ns):
    assert loopback_ns.interfaces == ["lo"]
    links = loopback_ns.run(["ip", "-o", "link", "show"], check=True).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    addresses = loopback_ns.run(["ip", "-o", "-4", "addr", "show"], check=True).stdout
    assert "127.0.0.1/8" in addresses and "<LOOPBACK,UP" in links[0]
    # nothing outside is reachable from inside (no route at all)
    code = "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=2)\n"
    assert "Network is unreachable" in loopback_ns.run([sys.executable, "-c", code]).stderr


RAY_DRIVER = textwrap.dedent("""
    import json, os, ray
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")

    @ray.remote
    def total(values):
        return sum(values)

    @ray.remote(num_gpus=0.5)
    def half_gpu():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), [str(i) for i in ray.get_gpu_ids()]

    @ray.remote(num_gpus=0)
    def no_gpu():
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    print(json.dumps({"sum": ray.get(total.remote(list(range(10)))), "half_gpu": ray.get(half_gpu.remote()),
                      "no_gpu": ray.get(no_gpu.remote())}))
    ray.shutdown()
""")


@RAY_GROUP
def test_ray_cluster_runs_tasks(loopback_ns, ray_cluster):
    assert ray_cluster.address.startswith("127.0.0.1:")
    assert ray_cluster.resources["CPU"] == 2 and ray_cluster.resources["GPU"] == 4
    result = last_json(loopback_ns.python(RAY_DRIVER, env=ray_cluster.env, timeout=120).stdout)
    assert result["sum"] == 45
    visible, gpu_ids = result["half_gpu"]
    assert visible in {"0", "1", "2", "3"} and visible == ",".join(gpu_ids)
    # a task without GPUs: Ray (2.4x+) leaves CUDA_VISIBLE_DEVICES as the raylet had it (unset here)
    assert result["no_gpu"] in (None, "")


SUBMITIT_DRIVER = textwrap.dedent("""
    import json, logging, os, sys
    import submitit

    logging.getLogger("submitit").setLevel(logging.ERROR)  # "Bypassing sacct error": no accounting here

    def square(x):
        import os
        return [x * x, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("SLURM_ARRAY_TASK_ID")]

    executor = submitit.AutoExecutor(folder=sys.argv[1])
    assert executor.cluster == "slurm", executor.cluster
    executor.update_parameters(slurm_partition=sys.argv[2], timeout_min=5, slurm_gres="gpu:1", cpus_per_task=1)
    jobs = executor.map_array(square, [3, 4])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array
    print(json.dumps([job.result() for job in jobs]))
""")


@SLURM_GROUP
def test_slurm_node_idle_with_pretend_gpus(loopback_ns, slurm_cluster):
    info = loopback_ns.run(["sinfo", "-h", "-o", "%P %T %c %G"], env=slurm_cluster.env, check=True).stdout.split()
    assert info[0] == f"{slurm_cluster.partition}*" and info[1] == "idle" and info[3] == "gpu:4"


@SLURM_GROUP
def test_submitit_job_array_on_local_slurm(loopback_ns, slurm_cluster, tmp_path):
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit not installed: pip install -r envs_requirements/requirements-cluster.txt")
    driver = tmp_path / "driver.py"
    driver.write_text(SUBMITIT_DRIVER)
    out = loopback_ns.run([sys.executable, driver, tmp_path / "logs", slurm_cluster.partition],
                          env=slurm_cluster.env, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = last_json(out.stdout)
    assert [r[0] for r in results] == [9, 16]
    assert [r[2] for r in results] == ["0", "1"]
    assert all(r[1] in {"0", "1", "2", "3"} for r in results)  # one pretend GPU each


@SLURM_GROUP
def test_slurm_stop_kills_its_daemons(tmp_path):
    """A second, short-lived Slurm in its own namespace (the session one holds the default ports)."""
    ok, reason = slurm_available()
    if not ok:
        pytest.skip(reason)
    with LoopbackNamespace() as ns:
        cluster = SlurmCluster(ns)
        pids = cluster.pids()
        assert set(pids) == {"munged", "slurmctld", "slurmd"} and all(_alive(pid) for pid in pids.values())
        cluster.stop()
        assert not any(_alive(pid) for pid in pids.values())
        assert not cluster.directory.exists()


def test_availability_reports_a_reason():
    for ok, reason in (loopback_available(), slurm_available()):
        assert isinstance(ok, bool) and (ok or reason)
