"""The attacks of several versions at once, one thread per device slot, and how an interrupt stops them.

Real-time DeepFailGuard attacks every version for every input; run one after another, its latency is the sum of
the versions'. Here each device slot gets a thread, so the latency approaches the slowest slot's. Ctrl-C (or a
slot's failure) sets the attackers' shared ``cancel`` event: every other attack stops at its next step.
"""

from __future__ import annotations

import sys
import threading

import torch

from Attacker import AttackResult

#: seconds an interrupted run waits for its attacks to stop at their next step before it leaves them
CANCEL_GRACE_S = 1.0
#: set once Ctrl-C interrupted attacks running in threads (``interrupted_attacks`` reads it)
_INTERRUPTED = False


def interrupted_attacks() -> bool:
    """Whether Ctrl-C interrupted ``attack_concurrently`` in this process. The interpreter's shutdown then
    crashed in 2 of 3 probes (SIGSEGV or SIGABRT inside torch, after every attack thread had stopped), so the
    caller ends the process at once instead (``pipeline.cli.run_main``)."""
    return _INTERRUPTED


def attack_concurrently(work: list, progress: bool = False, concurrent: bool = True) -> list[AttackResult]:
    """``module.attack_loader(loader)`` for every ``(module, loader)`` of ``work``, in its order, with one thread
    per device slot, so that the latency approaches the slowest slot's rather than the sum of the versions'.

    A slot is the entry of the device list a version was given (``module.device_slot``, ``--devices``); versions
    of one slot run one after another on its thread. Without slots, every CUDA version is a slot of its own
    (versions sharing a GPU each get a stream, so their kernels may overlap where the device has room) and the
    CPU versions share one: they run in turn (said on stderr where a device list asked for more), since they
    would only contend for the same cores. Results do not depend on the concurrency: a version's attack is the
    same computation on any thread.
    """
    global _INTERRUPTED
    slots: dict = {}
    for index, (module, _) in enumerate(work):
        device = module.attacker.device if module.attacker is not None else None
        key = module.device_slot if module.device_slot is not None else \
            (("cuda", index) if device is not None and device.type == "cuda" else "cpu")
        slots.setdefault(key, []).append(index)
    if not concurrent or len(slots) < 2:
        if concurrent and len(work) > 1 and any(module.device_slot is not None for module, _ in work):
            print("note: the versions share one CPU device, so their attacks run one after another (name the CPU "
                  "once per slot, e.g. --devices cpu cpu cpu, to run them side by side)", file=sys.stderr)
        return [module.attack_loader(loader, progress=progress) for module, loader in work]

    results: list = [None] * len(work)

    def run_slot(indices: list[int]) -> None:
        for index in indices:
            module, loader = work[index]
            device = module.attacker.device if module.attacker is not None else None
            if device is not None and device.type == "cuda":
                with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
                    results[index] = module.attack_loader(loader, progress=progress)
                    torch.cuda.current_stream(device).synchronize()
            else:
                results[index] = module.attack_loader(loader, progress=progress)

    stop = threading.Event()
    for module, _ in work:
        if module.attacker is not None:
            module.attacker.cancel = stop
    failures: list[BaseException] = []

    def guarded(indices: list[int]) -> None:
        try:
            run_slot(indices)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            failures.append(exc)
            stop.set()

    # daemon threads: an interrupted run never waits for an attack that has not yet reached its next step
    threads = [threading.Thread(target=guarded, args=(indices,), name=f"attack-{n}", daemon=True)
               for n, indices in enumerate(slots.values())]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)  # a short wait: Ctrl-C reaches this thread at once
    except BaseException as exc:  # Ctrl-C: the slots stop at their next step; whichever has not after a grace is left
        _INTERRUPTED = _INTERRUPTED or isinstance(exc, KeyboardInterrupt)
        stop.set()
        for thread in threads:
            thread.join(CANCEL_GRACE_S)
        raise
    finally:
        if not any(thread.is_alive() for thread in threads):
            for module, _ in work:
                if module.attacker is not None:
                    module.attacker.cancel = None
    if failures:
        _INTERRUPTED = _INTERRUPTED or isinstance(failures[0], KeyboardInterrupt)
        raise failures[0]  # a slot's exception, in the caller's thread
    return results
