"""The served user tower in-process: members run one after another vs stacked, side by side.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python perf/bench_user_tower.py \\
        --members 1 3 --batch 1 16 --rounds 5 --out perf/results/user_tower

For each member count, one model of the default architecture (seeded random weights: speed does
not depend on training) on a synthetic catalog (``--items`` items, 20 categories, history 50) is
scripted twice as the fused model Triton serves (user tower + exact top-10 retrieval): with
``export.model.ensemble.UserTowers`` (each member's tower in turn, its encoder per request, what
export served before) and with ``export.model.stacked.StackedUserTowers`` (what it serves now).
Each round times both forms, in turn, ``--calls`` calls per batch size after 50 warm-up calls, on
one thread. The two forms' scores are compared too (``max_score_difference``): the speed-up must
not change the answer. Writes ``user_tower.json`` (every round, medians with min-max, the
stacked/in-a-row ratio, the environment), ``user_tower.csv`` (one row per round, members, batch,
form) and ``user_tower.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("in_a_row", "stacked")
CSV_COLUMNS = ["round", "members", "batch", "form", "ms"]
LENGTH = 50


def fused_forms(members: int, items: int):
    """The two scripted fused models of a ``members``-member model, and the largest difference
    between their scores on a batch of random histories."""
    import torch

    from export.model.ensemble import UserTowers, members_of
    from export.model.retrieval import FusedRecommender, TopKRetrieval
    from export.model.stacked import served_user_tower
    from export.train import TrainConfig, new_model
    from perf.bench_train_step import synthetic_catalog

    catalog = synthetic_catalog(items)
    torch.manual_seed(0)
    model = new_model(catalog, TrainConfig(members=members, sequence_length=LENGTH)).eval()
    with torch.no_grad():
        retrieval = TopKRetrieval(model.item_embeddings())
        in_a_row = UserTowers([m.user_tower for m in members_of(model)])
        forms = {"in_a_row": torch.jit.script(FusedRecommender(in_a_row, retrieval)),
                 "stacked": torch.jit.script(FusedRecommender(served_user_tower(model), retrieval))}
        history, types = requests(catalog.num_embeddings, 64)
        difference = (forms["in_a_row"].scores(history, types)
                      - forms["stacked"].scores(history, types)).nan_to_num(0.0, 0.0, 0.0).abs().max()
    return forms, float(difference)


def requests(rows: int, batch: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    history = torch.randint(2, rows, (batch, LENGTH), generator=generator)
    types = torch.randint(1, 5, (batch, LENGTH), generator=generator)
    return history, types


def time_calls(fused, rows: int, batch: int, calls: int) -> float:
    """Milliseconds per fused call (top 10, nothing excluded) at ``batch``."""
    import torch

    history, types = requests(rows, batch)
    exclude = torch.zeros(batch, 1, dtype=torch.int64)
    k = torch.full((batch, 1), 10, dtype=torch.int32)
    with torch.no_grad():
        for _ in range(50):
            fused(history, types, exclude, k)
        started = time.perf_counter()
        for _ in range(calls):
            fused(history, types, exclude, k)
    return (time.perf_counter() - started) / calls * 1000


def plot(path: Path, summary: list[dict]) -> None:
    from perf.harness import figure

    groups = sorted({(s["members"], s["batch"]) for s in summary})
    with figure(path, 1, (1.6 + 1.1 * len(groups), 3.2)) as (_, ax):
        width = 0.38
        for i, form in enumerate(FORMS):
            rows = [next(s for s in summary if (s["members"], s["batch"]) == g and s["form"] == form)
                    for g in groups]
            medians = [r["ms"]["median"] for r in rows]
            errors = [[m - r["ms"]["min"] for m, r in zip(medians, rows, strict=True)],
                      [r["ms"]["max"] - m for m, r in zip(medians, rows, strict=True)]]
            ax.bar([g + (i - 0.5) * width for g in range(len(groups))], medians, width,
                   yerr=errors, capsize=3, label=form.replace("_", " "))
        ax.set_xticks(range(len(groups)), [f"{m} member{'s' * (m > 1)}\nbatch {b}" for m, b in groups])
        ax.set_ylabel("ms per fused call (median, min-max)")
        ax.set_title("scripted fused model, one thread")
        ax.legend()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, nargs="+", default=[1, 3])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("perf/results/user_tower"))
    args = p.parse_args(argv)

    import torch

    from perf.harness import environment, finish, ratio, spread, write_rounds

    torch.set_num_threads(1)
    started = time.perf_counter()
    built = {m: fused_forms(m, args.items) for m in args.members}
    rows = []
    for round_ in range(1, args.rounds + 1):
        for members, (forms, _) in built.items():
            for batch in args.batch:
                for form in FORMS:
                    ms = time_calls(forms[form], args.items + 2, batch, args.calls)
                    rows.append({"round": round_, "members": members, "batch": batch, "form": form,
                                 "ms": round(ms, 4)})
        print(f"round {round_}: " + ", ".join(f"{r['members']}m b{r['batch']} {r['form']} {r['ms']:.3f}"
                                              for r in rows if r["round"] == round_), flush=True)
    summary, problems = [], []
    for members, (_, difference) in built.items():
        if difference > 1e-4:
            problems.append(f"{members} members: the stacked scores differ by {difference:.2e}")
        for batch in args.batch:
            sides = {form: spread([r["ms"] for r in rows if (r["members"], r["batch"], r["form"])
                                   == (members, batch, form)]) for form in FORMS}
            summary += [{"members": members, "batch": batch, "form": form, "ms": sides[form],
                         "max_score_difference": difference} for form in FORMS]
            print(f"{members} member(s), batch {batch}: "
                  + ", ".join(f"{f} {v['median']} ms ({v['min']}-{v['max']})" for f, v in sides.items())
                  + f", stacked/in a row {ratio(sides['stacked']['median'], sides['in_a_row']['median'])}"
                  + f", max score difference {difference:.1e}")
    written = write_rounds(args.out, "user_tower", CSV_COLUMNS, rows, summary,
                           environment(items=args.items, calls=args.calls, torch_threads=1), plot)
    return finish(written, problems, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
