"""Real local Ray and Slurm clusters for tests, inside a loopback-only network namespace.

Every server started here (Ray's head node, munged, slurmctld, slurmd) runs in a private network
namespace whose only interface is ``lo``: Ray would otherwise advertise and listen on the machine's
external address, and a test Slurm must never be reachable from outside. Everything started is stopped
by process id (or process-group id), never by name.

    ns = LoopbackNamespace()                     # one holder process in a new net namespace
    ray_cluster = RayCluster(ns, num_cpus=2, num_gpus=4)
    ns.python("import ray; ray.init(); ...", env=ray_cluster.env)    # RAY_ADDRESS set
    slurm = SlurmCluster(ns, "/tmp/slurm-xyz")   # scripts/local_slurm.sh inside the namespace
    ns.run(["sbatch", ...], env=slurm.env)       # SLURM_CONF set
    slurm.stop(); ray_cluster.stop(); ns.close()

``loopback_available()`` and ``slurm_available()`` return ``(ok, reason)`` so tests can skip with a
clear message. Creating the namespace needs ``unshare``/``nsenter``/``ip`` (util-linux, iproute2) and
either root (``unshare -n``) or unprivileged user namespaces (``unshare -rn``); Slurm needs root and
the packages that ``scripts/install_slurm.sh`` installs.

Two things to know about such a namespace:

* ``/sys/class/net`` still lists the host's interfaces inside it (sysfs shows the namespace of whoever
  mounted it); ``/proc/net/dev`` and ``ip link`` show the namespace's own, and are what is checked.
* Besides 127.0.0.1 the namespace gets a second loopback address, 127.0.0.2/8 on ``lo``: with only
  127.0.0.1, glibc's ``getaddrinfo(AF_INET, AI_ADDRCONFIG)`` finds "no IPv4 address configured" and
  fails for every name, 127.0.0.1 included, which is exactly how Slurm resolves its hosts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
#: environment every process started in the namespace gets (on top of the caller's)
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def _path_with_sbin(path: str | None = None) -> str:
    parts = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    return os.pathsep.join([p for p in parts if p] + [s for s in SBIN if s not in parts])


def _which(name: str) -> str | None:
    return shutil.which(name, path=_path_with_sbin())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_dead(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not any(_alive(pid) for pid in pids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _terminate(send, members, timeout: float) -> None:
    """``send(SIGTERM)``, then ``send(SIGKILL)`` if ``members()`` still live after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            send(sig)
        except ProcessLookupError:
            return
        if _wait_dead(members(), wait):
            return


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it still lives after ``timeout`` seconds."""
    _terminate(lambda sig: os.kill(pid, sig), lambda: [pid], timeout)


def kill_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGTERM the process group ``pgid``, SIGKILL whatever is left after ``timeout`` seconds."""
    _terminate(lambda sig: os.killpg(pgid, sig), lambda: _group_members(pgid), timeout)


class LoopbackNamespace:
    """A network namespace with only ``lo`` (up, 127.0.0.1 and 127.0.0.2), held open by one process.

    ``run``/``popen``/``python`` start commands inside it with ``nsenter``. Root gets ``unshare -n``;
    anyone else ``unshare -rn`` (a user namespace too, entered with ``--user --preserve-credentials``).
    """

    def __init__(self, timeout: float = 15.0):
        for tool in ("unshare", "nsenter", "ip"):
            if _which(tool) is None:
                raise RuntimeError(f"`{tool}` not found (util-linux / iproute2)")
        self.user_namespace = os.geteuid() != 0
        self._children: list[subprocess.Popen] = []
        setup = ("ip link set lo up && ip addr add 127.0.0.2/8 dev lo && echo ready && exec cat >/dev/null")
        self._holder = subprocess.Popen(
            [_which("unshare"), "-rn" if self.user_namespace else "-n", "sh", "-c", setup],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self._env(None), start_new_session=True)
        line = self._holder.stdout.readline()
        if line.strip() != "ready":
            err = self._holder.stderr.read() if self._holder.poll() is not None else ""
            self.close()
            raise RuntimeError(f"cannot create a loopback-only network namespace: {err.strip() or line!r}")
        self._holder.stdout.close()
        self.pid = self._holder.pid
        self.interfaces = self.list_interfaces(timeout=timeout)
        if self.interfaces != ["lo"]:
            self.close()
            raise RuntimeError(f"namespace has interfaces {self.interfaces}, expected only lo")

    # -- running things inside -------------------------------------------------------------------------

    @property
    def prefix(self) -> list[str]:
        """The ``nsenter`` command line that puts what follows inside the namespace."""
        cmd = [_which("nsenter"), f"--target={self.pid}"]
        if self.user_namespace:
            cmd += ["--user", "--preserve-credentials"]
        return cmd + ["--net"]

    @staticmethod
    def _env(env: dict | None) -> dict:
        """The caller's environment + ``QUIET_ENV`` + ``env`` (a ``None`` value removes a variable),
        with the sbin directories on PATH (the Slurm and munge daemons live there)."""
        merged = dict(os.environ, **QUIET_ENV)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        merged["PATH"] = _path_with_sbin(merged.get("PATH", ""))
        return merged

    def run(self, cmd, env: dict | None = None, timeout: float | None = 120, check: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a list) inside the namespace and wait; output captured as text by default."""
        self._check_open()
        kwargs.setdefault("capture_output", "stdout" not in kwargs and "stderr" not in kwargs)
        kwargs.setdefault("text", True)
        return subprocess.run(self.prefix + [str(c) for c in cmd], env=self._env(env), timeout=timeout,
                              check=check, **kwargs)

    def popen(self, cmd, env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace in its own process group (``start_new_session``);
        ``close()`` kills the group if it still runs."""
        self._check_open()
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self.prefix + [str(c) for c in cmd], env=self._env(env), **kwargs)
        self._children.append(process)
        return process

    def python(self, code: str, env: dict | None = None, timeout: float | None = 120,
               check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run Python source with this interpreter inside the namespace; by default raise on failure
        (with its output in the message)."""
        result = self.run([sys.executable, "-c", code], env=env, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"python in namespace failed ({result.returncode}):\n"
                               f"{(result.stdout or '')[-3000:]}\n{(result.stderr or '')[-3000:]}")
        return result

    def free_port(self) -> int:
        """A TCP port free on 127.0.0.1 inside the namespace."""
        code = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
        return int(self.python(code, timeout=30).stdout.strip())

    def list_interfaces(self, timeout: float = 15.0) -> list[str]:
        """The interfaces the namespace sees (from ``/proc/net/dev``, which, unlike ``/sys/class/net``,
        belongs to the reader's network namespace)."""
        out = self.run(["cat", "/proc/net/dev"], timeout=timeout, check=True).stdout
        return sorted(line.split(":", 1)[0].strip() for line in out.splitlines()[2:] if ":" in line)

    # -- lifetime ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._holder is None or self._holder.poll() is not None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the namespace is closed")

    def close(self) -> None:
        """Kill the process groups of what ``popen`` started that still run, then the holder."""
        for process in reversed(self._children):
            if process.poll() is None:
                kill_group(process.pid)
            process.wait()
        self._children.clear()
        holder, self._holder = self._holder, None
        if holder is not None:
            if holder.stdin:
                holder.stdin.close()  # `cat` sees EOF and exits
            try:
                holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                kill_pid(holder.pid)
                holder.wait()
            for stream in (holder.stdout, holder.stderr):
                if stream and not stream.closed:
                    stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_LOOPBACK: tuple[bool, str] | None = None


def loopback_available() -> tuple[bool, str]:
    """Whether a loopback-only namespace can be made here, and if not why (cached)."""
    global _LOOPBACK
    if _LOOPBACK is None:
        try:
            LoopbackNamespace().close()
            _LOOPBACK = (True, "")
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            how = "unshare -rn (unprivileged user namespaces)" if os.geteuid() else "unshare -n"
            _LOOPBACK = (False, f"no loopback-only network namespace ({how}): {error}")
    return _LOOPBACK


# -- Ray ---------------------------------------------------------------------------------------------------

_RAY_CHECK = """
import json, ray
ray.init(log_to_driver=False, logging_level="ERROR")
print(json.dumps(ray.cluster_resources()))
ray.shutdown()
"""


class RayCluster:
    """A one-node Ray cluster (``ray start --head --block``) inside ``ns``, with pretend GPUs.

    ``address`` is ``127.0.0.1:PORT``; ``env`` (``RAY_ADDRESS``) makes a plain ``ray.init()`` in a
    process inside the namespace join it. Ray's files go to a short private temp dir (Unix socket
    paths must stay under 108 characters), removed by ``stop()``.
    """

    def __init__(self, ns: LoopbackNamespace, num_cpus: int = 2, num_gpus: int = 4, *, port: int | None = None,
                 object_store_mb: int = 100, timeout: float = 90.0, env: dict | None = None):
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            ray = Path(_which("ray") or "ray")
        self.ns = ns
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.port = port or ns.free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.log_path = self.temp_dir / "ray-start.log"
        # Token authentication pinned for the head and every driver, with a private token: left unset, Ray
        # (2.5x+) turns tokens on for `ray start` whenever ~/.ray/auth_token exists (any local `ray.init()`
        # writes one), while a driver given an explicit address keeps them off and is refused.
        token_path = self.temp_dir / "auth_token"
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
        self._env = dict(env or {}, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
        cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", self.port,
               "--num-cpus", num_cpus, "--num-gpus", num_gpus, "--include-dashboard", "false",
               "--disable-usage-stats", "--temp-dir", self.temp_dir,
               "--object-store-memory", object_store_mb * 1024 * 1024]
        started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.process = ns.popen(cmd, env=self._env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            self._wait_started(timeout)
            self.resources = json.loads(ns.python(_RAY_CHECK, env=self.env, timeout=timeout).stdout
                                        .strip().splitlines()[-1])
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start not up after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def auth_env(self) -> dict:
        """What a driver needs to be let in (given ``--ray-address`` explicitly, Ray does not guess it)."""
        return {key: self._env[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}

    @property
    def env(self) -> dict:
        """Variables for a driver inside the namespace: ``RAY_ADDRESS``, the token and the caller's ``env``."""
        return dict(self._env, RAY_ADDRESS=self.address)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the ``ray start`` process alone (it then shuts its children down itself, ~2 s),
        SIGKILL its process group if that takes longer than ``timeout``, remove the temp dir.

        (SIGTERM to the whole group instead kills the raylet under ``ray start``'s feet, and its
        shutdown then hangs ~30 s "draining" before giving up.)"""
        process = getattr(self, "process", None)
        if process is not None:
            pgid = process.pid  # its own session: pid == pgid
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(pgid, timeout=1.0)  # whatever is left in the group (normally nothing)
            process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# -- Slurm -------------------------------------------------------------------------------------------------

SLURM_BINARIES = ("slurmctld", "slurmd", "munged", "munge", "sbatch", "srun", "sinfo", "squeue", "scancel")


def slurm_available() -> tuple[bool, str]:
    """Whether a private Slurm can be started here (binaries present, root), and if not why."""
    missing = [name for name in SLURM_BINARIES if _which(name) is None]
    if missing:
        return False, (f"Slurm not installed ({', '.join(missing)} missing): "
                       "install Slurm with `sudo scripts/install_slurm.sh`")
    if os.geteuid() != 0:
        return False, "the local Slurm runs its daemons as root (SlurmUser=root): run the tests as root"
    ok, reason = loopback_available()
    return (True, "") if ok else (False, reason)


class SlurmCluster:
    """munged + slurmctld + slurmd for one node (``hostname -s`` at 127.0.0.1, all CPUs, ``gpus``
    pretend GPUs) started by ``scripts/local_slurm.sh`` inside ``ns``, every file under ``directory``.

    ``env`` (``SLURM_CONF``) is what a client inside the namespace needs; ``partition`` is the only
    partition. ``stop()`` cancels the jobs left and kills the daemons by the pids in their pid files.
    """

    PIDS = ("slurmd", "slurmctld", "munged")  # stop order

    def __init__(self, ns: LoopbackNamespace, directory=None, *, gpus: int = 4, cpus: int | None = None,
                 timeout: float = 30.0):
        self.ns = ns
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="slurm-", dir="/tmp")).resolve()
        if len(str(self.directory)) > 70:  # munge's and slurmd's Unix sockets live in it
            raise ValueError(f"Slurm directory path too long for Unix sockets: {self.directory}")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.gpus = gpus
        self.partition = "debug"
        self.node = os.uname().nodename.split(".")[0]
        extra = {"SLURM_LOCAL_GPUS": gpus, "SLURM_LOCAL_TIMEOUT": int(timeout)}
        if cpus:
            extra["SLURM_LOCAL_CPUS"] = cpus
        started = time.monotonic()
        result = ns.run(["bash", LOCAL_SLURM, "start", self.directory], env=extra, timeout=timeout + 60)
        self.start_seconds = time.monotonic() - started
        self.start_output = result.stdout + result.stderr
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"local Slurm did not start:\n{self.start_output[-4000:]}")

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    def pids(self) -> dict[str, int]:
        """The daemons' pids from their pid files (those that exist)."""
        found = {}
        for name in self.PIDS:
            try:
                found[name] = int((self.directory / f"{name}.pid").read_text().strip())
            except (OSError, ValueError):
                pass
        return found

    def stop(self) -> None:
        pids = self.pids()
        if "slurmctld" in pids and _alive(pids["slurmctld"]) and not self.ns.closed:
            # no job may outlive the cluster (its slurmstepd would keep running)
            user = os.environ.get("USER") or "root"
            self.ns.run(["scancel", f"--user={user}"], env=self.env, timeout=30)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                queue = self.ns.run(["squeue", "-h", "-o", "%i"], env=self.env, timeout=30)
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.3)
        for name in self.PIDS:
            if name in pids:
                kill_pid(pids[name])
                (self.directory / f"{name}.pid").unlink(missing_ok=True)
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
