"""Train, evaluate against baselines, and export to a Triton model repository.

    python -m export --dataset ml-100k --seeds 0 1 2          # the documented evaluation
    python -m export --dataset path/to/log.parquet --items path/to/items.csv
    python -m export --dataset synthetic --no-export
    python -m export --dataset ml-100k --seeds 0 --no-export --tune 20   # search on validation first
    python -m export --dataset ml-100k --device cuda          # train on a GPU (bf16 autocast by default)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from export.evaluation.report import format_table
from export.pipeline import load_dataset, run
from export.train import TrainConfig, resolve_device
from export.triton.repository import ServingConfig
from export.tune import TUNING_JSON, format_tuning, tune


def main(argv: list[str] | None = None) -> int:
    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k", help="ml-100k | synthetic | CSV/Parquet file")
    parser.add_argument("--items", type=Path, default=None, help="item attributes file (optional)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("build"))
    parser.add_argument("--no-export", action="store_true", help="evaluate only")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--target", choices=["python", "libtorch"], default="python",
                        help="python backend (bundled CPU server) or pytorch_libtorch (NGC)")
    parser.add_argument("--instance-kind", choices=["cpu", "gpu"], default="cpu",
                        help="where Triton runs every exported model's instances")
    parser.add_argument("--instances", type=int, default=ServingConfig.instances,
                        help="instances per model (per GPU with --instance-kind gpu)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[d.seed])
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--dim", type=int, default=d.dim)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay,
                        help="validate and serve a moving average of the weights (e.g. 0.998; "
                             "0 = off)")
    parser.add_argument("--id-dropout", type=float, default=d.id_dropout,
                        help="train items without their id vector this often (leans on attributes)")
    parser.add_argument("--sequence-length", type=int, default=d.sequence_length,
                        help="steps of recent behaviour the user tower reads")
    parser.add_argument("--user-tower", choices=["attention", "pooled"], default=d.user_tower,
                        help="pooled = without the attention read-out (the ablation)")
    parser.add_argument("--no-event-types", action="store_true",
                        help="ignore event types (the id-only ablation)")
    parser.add_argument("--transition", action=argparse.BooleanOptionalAction, default=d.transition,
                        help="the learned 'what follows' vector of the last step (off by default)")
    parser.add_argument("--whole-history", action=argparse.BooleanOptionalAction,
                        default=d.whole_history,
                        help="also train each target from all the user's other steps (set "
                             "completion); default: decided on validation by a pilot that trains "
                             "the first member both ways (one extra member's training)")
    parser.add_argument("--item-item", type=float, default=d.item_item, metavar="RELATIVE_WEIGHT",
                        help="weight of the item-item term (EASE factorised to --item-item-rank) "
                             "relative to the score spreads; default: chosen on validation after "
                             "training (0 when it does not help)")
    parser.add_argument("--no-item-item", dest="item_item", action="store_const", const=0.0,
                        help="towers only")
    parser.add_argument("--item-item-rank", type=int, default=d.item_item_rank)
    parser.add_argument("--members", type=int, default=d.members,
                        help="two-tower models trained one after another, each with its own seed, "
                             "and served as one (1: a single model)")
    parser.add_argument("--loss", choices=["full", "sampled"], default=d.loss)
    parser.add_argument("--uniform-negatives", type=int, default=d.uniform_negatives)
    parser.add_argument("--loader", choices=["memory", "dali"], default="memory",
                        help="dali: DALI reads shards, on the GPU when training on CUDA")
    parser.add_argument("--device", default=d.device, metavar="auto|cpu|cuda|cuda:N",
                        help="where to train: auto = CUDA when torch sees a GPU, else the CPU "
                             "(exported models are CPU TorchScript either way)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                        help="bf16 autocast for training; default: on when training on CUDA, "
                             "always off on the CPU")
    parser.add_argument("--temporal", action="store_true",
                        help="also train one model per seed on the temporal split's pre-cut data "
                             "and evaluate it there (doubles training; docs/evaluation.md)")
    parser.add_argument("--tune", type=int, default=0, metavar="N",
                        help="first search N configs on the validation split (export/tune.py), then "
                             "train the best one as usual; overrides the searched flags")
    parser.add_argument("--tune-epochs", type=int, default=6, help="maximum epochs per tuning trial")
    parser.add_argument("--tune-patience", type=int, default=2,
                        help="early-stopping patience per tuning trial")
    args = parser.parse_args(argv)
    try:  # before any data is read: a missing GPU is a usage error, not a crash an hour in
        resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    try:  # likewise a bad instance count, before training rather than at export
        serving = ServingConfig(instances=args.instances,
                                instance_kind=f"KIND_{args.instance_kind.upper()}")
    except ValueError as error:
        parser.error(f"--instances: {error}")
    if args.members < 1:
        parser.error(f"--members: at least 1, not {args.members}")
    if not 0.0 <= args.ema_decay < 1.0:
        parser.error(f"--ema-decay: in [0, 1), not {args.ema_decay}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(epochs=args.epochs, patience=args.patience, dim=args.dim,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         temperature=args.temperature, loss=args.loss, id_dropout=args.id_dropout,
                         ema_decay=args.ema_decay,
                         uniform_negatives=args.uniform_negatives,
                         sequence_length=args.sequence_length, user_tower=args.user_tower,
                         use_types=not args.no_event_types, transition=args.transition,
                         whole_history=args.whole_history, members=args.members,
                         item_item=args.item_item, item_item_rank=args.item_item_rank,
                         device=args.device, amp=args.amp)
    tuning = None
    if args.tune > 0:
        # Trials train with the first seed; the search never reads the test split.
        tuning = tune(load_dataset(args.dataset, args.items), config, args.tune,
                      epochs=args.tune_epochs, patience=args.tune_patience, seed=args.seeds[0],
                      artifacts=args.artifacts)
        config = tuning.best_config
    result = run(args.dataset, None if args.no_export else args.repository, args.artifacts, config,
                 seeds=args.seeds, items_path=args.items, loader=args.loader,
                 baselines=not args.no_baselines, version=args.version,
                 target=args.target, temporal=args.temporal,
                 serving=serving)
    if tuning is not None:
        print(format_tuning(tuning.record))
        print()
    print(format_table(result.report))
    print(f"report: {args.artifacts / 'report.json'}  chart: {args.artifacts / 'metrics.png'}"
          + ("" if args.no_export else f"  repository: {args.repository}")
          + ("" if tuning is None else f"  tuning: {args.artifacts / TUNING_JSON}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
