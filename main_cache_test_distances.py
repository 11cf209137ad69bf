"""Step 3: cache every version's test-set DeepFool distances and labels in the paper's layout.

Per version ``{info-root}/test_information_cached/{DATASET}_{model}_bug{id}_{what}.npy`` with
``what`` = ``distances`` and ``dnn_labels`` (the paper's files) plus ``success`` (did DeepFool flip
the label), ``probabilities`` (softmax) and ``logits`` (for the scores and methods that read them); per
test set ``{DATASET}_ground_truth.npy`` (``{DATASET}_bug{11,12}_ground_truth.npy`` for the shifted sets).
Another ``--distance`` mode's files carry its name (``…_distances_first-order.npy``). ``--shifts`` caches the
test set under ImageNet-C corruptions (``mydataset/corruptions.py``) too, each in its folder beside the clean cache
(``test_information_cached/fog-3/``), the same names inside.

Examples:
    python main_cache_test_distances.py
    python main_cache_test_distances.py --distance feature --shifts none gaussian_noise:5 fog:3
    python main_cache_test_distances.py --distance first-order:2 --shifts all:3 all:5
    python main_cache_test_distances.py --preset paper --device cuda --batch-size 512
"""

from __future__ import annotations

import argparse

import launchers
from pipeline import flags


def build_parser() -> argparse.ArgumentParser:
    parser = flags.attack_step_parser(__doc__)
    flags.add_shift_flags(parser, fit=False)
    flags.add_run_flags(parser)
    flags.add_root_flags(parser, "data", "model", "info", "output", output_help="folder of the launchers' logs")
    launchers.add_launcher_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import cache  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return cache.run(args)


if __name__ == "__main__":
    flags.run_main(main)
