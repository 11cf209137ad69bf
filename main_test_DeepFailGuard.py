"""Step 4b: evaluate DeepFailGuard in real time: load versions and KDEs, attack the test inputs, select.

Same version sets, methods and CSV schema as the cached evaluation (step 4a), but every distance is
computed now by running DeepFool against the live networks; nothing is read from the test cache (the
validation outputs the fit step kept are read, for the methods that learn from them). ``--shifts`` corrupts the
test inputs as the cache step does (same seeds, same inputs), ``--fit-shifts`` picks the failure models.

``--devices`` gives each version a device of its own (in turn), and their attacks run side by side.

Examples:
    python main_test_DeepFailGuard.py --output dfg_results/realtime
    python main_test_DeepFailGuard.py --devices cuda:0 cuda:1 cuda:2 --distance first-order
    python main_test_DeepFailGuard.py --models resnet densenet --bugs 0 8 --device cuda
"""

from __future__ import annotations

import argparse

from pipeline import flags
from storage.settings import DEFAULT_REALTIME_OUTPUT


def build_parser() -> argparse.ArgumentParser:
    parser = flags.attack_step_parser(__doc__)
    flags.add_posterior_flag(parser)
    flags.add_shift_flags(parser)
    parser.add_argument("--devices", nargs="+", type=flags.device_flag, default=None, metavar="DEVICE",
                        help="one device per version, in turn (e.g. cuda:0 cuda:1 cuda:2, or cpu cpu cpu): the "
                             "versions' attacks then run side by side (default: every version on --device)")
    flags.add_abstention_flags(parser)
    latency = parser.add_argument_group("deployment latency (latency.csv)")
    latency.add_argument("--latency-inputs", type=flags.positive_int, default=64, metavar="N",
                         help="test inputs the policies are timed on, per dataset (default 64)")
    latency.add_argument("--latency-repeats", type=flags.non_negative_int, default=3, metavar="N",
                         help="timed runs per policy, the median is kept (default 3; 0: no latency.csv)")
    flags.add_run_flags(parser, force=False)
    flags.add_root_flags(parser, "data", "model", "info", "output")
    parser.set_defaults(output=DEFAULT_REALTIME_OUTPUT)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import realtime  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return realtime.run(args)


if __name__ == "__main__":
    flags.run_main(main)
