"""How fast a script answers a command line it needs no work for: ``--help`` and a usage error, per script.

Each is a fresh interpreter (what a user waits for at the shell), timed from start to exit. The reference, run in
the same round: the interpreter importing torch and nothing else (what every answer cost when the scripts
loaded torch before parsing), and the bare interpreter (``python -c pass``, the floor). Medians over ``--rounds``
rounds, the cases interleaved within a round; per case its median, its ratio to the torch import, and the
exit status and number of stderr lines of the usage error (2 and 1: one line, ``prog: error: ...; see --help``).

``--repo`` times another checkout's scripts with this harness (its interpreter too, unless ``--python``), e.g.
the one before the command line was made light: ``git worktree add /tmp/before e13783d``.

    python benchmarks/bench_cli.py [--rounds 5] [--repo PATH] [--python PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("main_train_model.py", "main_train_DeepFailGuard.py", "main_cache_test_distances.py",
           "main_test_DeepFailGuard.py", "main_test_DeepFailGuard_from_cached.py", "main_validate_faults.py")
#: a usage error every script finds while parsing (a fault id that is not a number)
USAGE_ERROR = ("--bugs", "x")


def timed(argv: list[str], cwd: Path) -> tuple[float, int, int]:
    """Seconds from start to exit, exit status, lines on stderr."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, len(done.stderr.strip().splitlines())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose scripts are timed")
    parser.add_argument("--python", default=None, help="its interpreter (default: its .venv's, else this one)")
    args = parser.parse_args(argv)
    python = args.python or next((str(p) for p in [args.repo / ".venv/bin/python"] if p.exists()), sys.executable)
    cases = {"python -c pass": [python, "-c", "pass"], "python -c 'import torch'": [python, "-c", "import torch"]}
    for script in SCRIPTS:
        cases[f"{script} --help"] = [python, script, "--help"]
        cases[f"{script} {' '.join(USAGE_ERROR)}"] = [python, script, *USAGE_ERROR]
    times = {case: [] for case in cases}
    answers = {}
    for _ in range(args.rounds):
        for case, command in cases.items():
            seconds, status, lines = timed(command, args.repo)
            times[case].append(seconds)
            answers[case] = (status, lines)
    reference = statistics.median(times["python -c 'import torch'"])
    print(f"{args.repo} ({python}), median of {args.rounds} rounds")
    print(f"{'case':62s} {'median s':>9s} {'/ torch':>8s} {'exit':>5s} {'stderr lines':>13s}")
    for case, seconds in times.items():
        status, lines = answers[case]
        print(f"{case:62s} {statistics.median(seconds):9.2f} {statistics.median(seconds) / reference:8.2f} "
              f"{status:5d} {lines:13d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
