"""Step 2: fit each version's failure model (KDEs of validation DeepFool distances, correct vs wrong).

Writes ``{info-root}/kde_results/{key}_{correct,wrong}.npz`` and a figure per version in
``{output}/figures/``. Versions with test-data faults (10-12) share the healthy version's KDEs.

Examples:
    python main_train_DeepFailGuard.py                       # every trained DIGITS version
    python main_train_DeepFailGuard.py --models resnet --bugs 0 8 --device cuda
"""

from __future__ import annotations

import cli
import FaultInjector


def main(argv=None) -> int:
    parser = cli.base_parser(__doc__.splitlines()[0])
    cli.add_launcher_flags(parser)
    args = parser.parse_args(argv)
    grid, _ = cli.prepare(args, writable=[args.info_root, args.output])
    # one failure model per checkpoint: faults 10-12 reuse the healthy one
    trained = cli.trained_versions(grid, args.model_root)
    versions = list(dict.fromkeys((d, m, FaultInjector.checkpoint_fault(b)) for d, m, b in trained))
    return cli.launch_and_report(cli.make_jobs("fit", versions, args, max_inputs=grid.max_inputs), args)


if __name__ == "__main__":
    cli.run_main(main)
