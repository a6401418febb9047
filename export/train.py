"""Train the two towers on next-item prediction.

The examples (a target's history and the target) come from ``export.data.examples``.

Two losses, chosen by measurement (see docs/model.md):

* ``sampled`` — sampled softmax over the other targets in the batch (in-batch negatives), with the
  logQ correction: an item that appears in many batches is a negative far more often than a rare
  one, so its logit is lowered by log(expected count in a batch) to undo that popularity bias.
  Optionally mixed with uniformly sampled negatives (corrected by their own, uniform, logQ), which
  also reach the long tail that in-batch negatives rarely visit. Scales to any catalog size.
* ``full`` — softmax over the whole catalog; exact, affordable for thousands of items.

Early stopping watches Recall@10 on the validation split; the best epoch's weights are kept and
checkpointed.

Devices (``TrainConfig.device``, ``resolve_device``): the model, ``log_q`` and every batch are moved
to the training device, and every tensor the losses make is made on their inputs' device. Uniform
negatives are always drawn by a CPU generator and then moved, so a seed draws the same negatives
on every device. On CUDA the forward pass and loss run under bf16 autocast by default
(``TrainConfig.amp``); on the CPU nothing changes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from export.model.ensemble import TowerEnsemble, Towers, members_of
from export.model.item_item import ITEM_ITEM_RANK, Blended, ItemItem
from export.model.towers import TwoTower
from features.behaviour import encode_types
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog
from features.sequence import encode_history

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (histories [B, 2L], targets [B])
MEMBER_SEED_STRIDE = 1000  # member i of seed s trains with seed s + 1000 i: distinct for s < 1000
LOSS_SHOWN_EVERY = 50  # steps between progress-bar loss updates off the CPU (each one syncs)


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    sequence_length: int = 50
    # The maximum; early stopping ends sooner. 12 was binding on a 9.7k-item dataset (validation
    # still rising); 30 with patience 5 left ML-100K's chosen epochs, and so its results, unchanged
    # (docs/model.md). Patience 5: one-target validation on ~600 users moves ±.01 between epochs.
    epochs: int = 30
    patience: int = 5  # epochs without a better validation Recall@10 before stopping
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    # > 0: what is validated, kept at the best epoch and served is an exponential moving average
    # of the weights (per step: avg = decay * avg + (1 - decay) * weights, so about the last
    # 1 / (1 - decay) steps), not the last step's weights. Off: at 0.998 (one model, seed 0) best
    # validation Recall@10 moved +5 % on Last.fm, -1 % on ML-100K, -12 % on latest-small, and
    # the 3-seed ensemble on Last.fm gained nothing on test (docs/model.md).
    ema_decay: float = 0.0
    temperature: float = 0.07
    recency_decay: float = 0.9
    dropout: float = 0.1
    id_dropout: float = 0.0  # see export.model.towers.ItemEncoder
    user_tower: Literal["attention", "pooled"] = "attention"  # see export.model.towers.UserTower
    use_types: bool = True  # False: the id-only ablation (event types ignored)
    # A learned "what follows" vector per item (UserTower). Off: side by side on three datasets
    # (torch 2.13) it lost on validation and test everywhere (docs/model.md).
    transition: bool = False
    # Also train on "whole history" examples: each target predicted from every other step of the
    # user's training history, later ones included (set completion, what EASE learns). They helped
    # where order says little (a day-resolution tagging log) and hurt badly where it says much
    # (docs/model.md), so None, the default, decides on validation, once per run
    # (export.pipeline.train_seeds); True/False force it. Serving is the same either way.
    whole_history: bool | None = None
    # Two-tower models trained one after another with their own seeds and served as one
    # (export.model.ensemble). 3: the mean of three beat one model on validation and test on
    # every dataset measured (docs/model.md), for 3x the training time.
    members: int = 3
    # The item-item term (export.model.item_item): EASE factorised to item_item_rank, added to the
    # towers' score. item_item is its weight relative to the two scores' spreads: None (default)
    # chooses it on validation after training (export.pipeline.blend_item_item), 0 turns the
    # term off, a positive number sets it. item_item_weight is the absolute weight in use,
    # recorded so a checkpoint rebuilds the model it holds.
    item_item: float | None = None
    item_item_rank: int = ITEM_ITEM_RANK
    item_item_weight: float = 0.0
    loss: Literal["full", "sampled"] = "sampled"
    uniform_negatives: int = 0  # per batch, shared by all rows; only for loss="sampled"
    logq_correction: bool = True
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"; see resolve_device
    amp: bool | None = None  # bf16 autocast; None: on exactly when training on CUDA (resolve_amp)

    def as_dict(self) -> dict:
        return asdict(self)


def config_from_dict(values: dict) -> TrainConfig:
    """A checkpoint's or serving.json's config dict as a TrainConfig (unknown keys ignored). One
    saved before ensembles existed has no "members": it was one model."""
    names = {f.name for f in fields(TrainConfig)}
    # Saved before the option existed: trained without whole-history examples.
    return TrainConfig(**{"members": 1, "whole_history": False}
                       | {k: v for k, v in values.items() if k in names})


def new_model(catalog: ItemCatalog, config: TrainConfig | dict) -> Towers:
    """A freshly initialised model with ``config``'s architecture (seed first for repeatability):
    a ``TwoTower``, or a ``TowerEnsemble`` of ``config.members`` of them; with a positive
    ``item_item_weight``, that inside a ``Blended`` with zero factors. ``config`` may be a
    checkpoint's or serving.json's config dict (unknown keys ignored; a config from before
    ensembles, without "members", is one model)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    if config.members < 1:
        raise ValueError(f"members must be at least 1, not {config.members}")
    members = [TwoTower(catalog, config.dim, config.sequence_length, config.recency_decay,
                        config.dropout, config.id_dropout, config.user_tower, config.use_types,
                        config.transition) for _ in range(config.members)]
    towers = members[0] if len(members) == 1 else TowerEnsemble(members)
    if config.item_item_weight > 0:  # factors to be loaded from a checkpoint
        rank = min(config.item_item_rank, catalog.num_embeddings)
        return Blended(towers, ItemItem.empty(catalog.num_embeddings, rank), config.item_item_weight)
    return towers


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(requested: str) -> torch.device:
    """The training device for ``TrainConfig.device``: "auto" is CUDA when torch sees a GPU and
    the CPU otherwise; an explicit CUDA device that does not exist is a ValueError here rather
    than a failure deep inside torch."""
    if not _DEVICE.fullmatch(requested):
        raise ValueError(f"device {requested!r}: use auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} was requested, but torch sees no CUDA device "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                             "train on the CPU with --device cpu (or --device auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {requested!r}: torch sees {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return device


def resolve_amp(requested: bool | None, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: only on CUDA; by default there when the GPU has
    native bf16. On the CPU always off, so CPU results stay exactly float32 ones."""
    if device.type != "cuda":
        if requested:
            log.warning("amp is for CUDA training only; training on %s in float32", device)
        return False
    if requested is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return requested


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast for the forward pass and loss (no GradScaler: bf16 has float32's range)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_histories(histories: Sequence[Sequence[str]], catalog: ItemCatalog, length: int) -> torch.Tensor:
    """[U, 2L]: each row the item indices of the last ``length`` steps, then their type codes
    (``features.behaviour``; the same encoding the gateway sends to Triton)."""
    return torch.from_numpy(np.stack([
        np.concatenate([encode_history(h, catalog, length), encode_types(h, length)])
        for h in histories]))


def user_vectors(model: Towers, histories: torch.Tensor) -> torch.Tensor:
    """User embeddings of packed history rows [B, 2L]."""
    length = histories.shape[1] // 2
    return model.user_tower(histories[:, :length], histories[:, length:])


def score_histories(model: Towers, catalog: ItemCatalog, length: int):
    """A ScoreFn (see export.evaluation.metrics) backed by the model, cosine scores over every
    catalog row; the model may be on any device, the scores come back as a CPU array."""

    @torch.no_grad()
    def score(histories: Sequence[Sequence[str]]) -> np.ndarray:
        model.eval()
        rows = encode_histories(histories, catalog, length).to(model_device(model))
        users = user_vectors(model, rows)
        return (users @ model.item_embeddings().T).float().cpu().numpy()

    return score


def target_log_frequencies(targets: np.ndarray, num_embeddings: int) -> torch.Tensor:
    """log P(item is a given training target), smoothed so unseen items stay finite."""
    counts = np.bincount(targets, minlength=num_embeddings).astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def full_softmax_loss(model: TwoTower, users: torch.Tensor, targets: torch.Tensor,
                      config: TrainConfig) -> torch.Tensor:
    logits = users @ model.item_embeddings().T / config.temperature
    logits[:, :FIRST_ITEM_INDEX] = float("-inf")  # PAD/OOV are never a right answer
    return F.cross_entropy(logits, targets)


def sampled_softmax_loss(model: TwoTower, users: torch.Tensor, targets: torch.Tensor,
                         config: TrainConfig, log_q: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """In-batch (+ optional uniform) negatives with logQ correction; row i's positive is column i.
    Every tensor made here is made on ``targets``' device (``log_q`` must be there too); uniform
    negatives are drawn on ``generator``'s device (the CPU by default) and moved."""
    batch, device = len(targets), targets.device
    candidates = model.item_tower(targets)  # [B, D]
    logits = users @ candidates.T / config.temperature  # [B, B]
    if config.logq_correction:
        # expected number of times item j is in a batch of size B: B * q_j
        logits = logits - (log_q[targets] + np.log(batch)).unsqueeze(0)
    # The same item twice in a batch: for row i the other copy is not a negative.
    duplicate = (targets.unsqueeze(1) == targets.unsqueeze(0)) & ~torch.eye(batch, dtype=torch.bool,
                                                                                 device=device)
    logits = logits.masked_fill(duplicate, float("-inf"))
    if config.uniform_negatives > 0:
        num_items = log_q.shape[0] - FIRST_ITEM_INDEX
        negatives = torch.randint(FIRST_ITEM_INDEX, log_q.shape[0], (config.uniform_negatives,),
                                  generator=generator,
                                  device=generator.device if generator is not None else "cpu")
        negatives = negatives.to(device)
        uniform_logits = users @ model.item_tower(negatives).T / config.temperature
        if config.logq_correction:
            uniform_logits = uniform_logits - float(np.log(config.uniform_negatives / num_items))
        accidental = targets.unsqueeze(1) == negatives.unsqueeze(0)
        logits = torch.cat([logits, uniform_logits.masked_fill(accidental, float("-inf"))], dim=1)
    return F.cross_entropy(logits, torch.arange(batch, device=device))


def train_step(model: TwoTower, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor], config: TrainConfig,
               device: torch.device, *, log_q: torch.Tensor | None,
               generator: torch.Generator | None, amp: bool) -> torch.Tensor:
    """One optimiser step on ``batch``, first moved to ``device`` where it is elsewhere (a CPU
    loader feeding a GPU, or DALI's CUDA batches a CPU run); returns the loss, detached, still on
    ``device`` (reading it as a number would wait for the GPU every step)."""
    histories, targets = (t.to(device, non_blocking=device.type == "cuda") for t in batch)
    with _autocast(device, amp):
        users = user_vectors(model, histories)
        if config.loss == "full":
            loss = full_softmax_loss(model, users, targets, config)
        else:
            loss = sampled_softmax_loss(model, users, targets, config, log_q, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def member_seed(seed: int, index: int) -> int:
    """The seed member ``index`` of an ensemble trains with (member 0: the run's own seed)."""
    return seed + MEMBER_SEED_STRIDE * index


def train(
    model: Towers,
    batches: Batches,
    config: TrainConfig,
    *,
    log_q: torch.Tensor | None = None,
    validate: Callable[[Towers], dict[str, float]] | None = None,
    checkpoint_dir: Path | None = None,
    trained: Sequence[list[dict]] = (),
) -> list[dict]:
    """Train in place; returns one record per epoch (an ensemble's carry their "member").

    An ensemble's members are trained one after another, each exactly as one model is trained:
    its own seed (``member_seed``), the loader's next epochs (so its own batch order), its own
    early stopping on ``validate(member)``. Trained side by side on the same batches, three
    members learned nearly the same ranking and the ensemble gained nothing over one model (on
    MovieLens latest-small, docs/model.md); trained apart, they differ, and their mean gains.
    Members' checkpoints go to ``checkpoint_dir/member<i>/``, the ensemble's to ``checkpoint_dir``.

    ``trained``: the epoch records of the first members, already trained this way (a pilot,
    export.pipeline); they are kept as they are and the rest trained after them.

    A ``Blended`` model trains its towers; the item-item term is fitted, not trained, and stays.
    """
    if isinstance(model, Blended):
        model = model.towers
    members = members_of(model)
    if len(trained) > len(members):
        raise ValueError(f"{len(trained)} members trained, but the model has {len(members)}")
    if len(members) == 1:
        return list(trained[0]) if trained else _train_one(
            model, batches, config, log_q=log_q, validate=validate, checkpoint_dir=checkpoint_dir)
    records = [{"member": index, **r} for index, rs in enumerate(trained) for r in rs]
    for index, member in enumerate(members):
        if index < len(trained):
            continue
        log.info("ensemble member %d of %d", index + 1, len(members))
        # members=1: a member's own checkpoint is one model's
        member_config = replace(config, seed=member_seed(config.seed, index), members=1)
        directory = None if checkpoint_dir is None else checkpoint_dir / f"member{index}"
        records += [{"member": index, **r} for r in _train_one(
            member, batches, member_config, log_q=log_q, validate=validate, checkpoint_dir=directory)]
    if checkpoint_dir is not None:  # every member at its best epoch (each has its own last.pt)
        save_checkpoint(model, None, config, records, checkpoint_dir / "best.pt")
    return records


def _train_one(
    model: TwoTower,
    batches: Batches,
    config: TrainConfig,
    *,
    log_q: torch.Tensor | None = None,
    validate: Callable[[TwoTower], dict[str, float]] | None = None,
    checkpoint_dir: Path | None = None,
) -> list[dict]:
    """Train one model in place; returns one record per epoch.

    ``batches`` is iterated once per epoch (``export.data.loaders.InMemoryBatches`` or ``DaliBatches``).
    The model, ``log_q`` and each batch are moved to ``config.device`` (resolved); the model is
    left there.
    ``validate(model)`` returns validation metrics; with it, training stops after ``patience``
    epochs without a better ``recall@10`` and the best epoch's weights are restored.
    """
    if config.loss == "sampled" and log_q is None:
        raise ValueError("loss='sampled' needs log_q (see target_log_frequencies)")
    device = resolve_device(config.device)
    amp = resolve_amp(config.amp, device)
    log.info("training on %s%s", device, " with bf16 autocast" if amp else "")
    model.to(device)
    if log_q is not None:
        log_q = log_q.to(device)
    seed_everything(config.seed)
    # A CPU generator on every device: the same seed draws the same uniform negatives everywhere.
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    average = None if config.ema_decay <= 0 else AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    # the weights validated, kept and returned: the average when there is one
    scored = model if average is None else average.module
    records: list[dict] = []
    best_score, best_state, stale = float("-inf"), None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        # Summed on the device in float64: the same sum as adding Python floats, without a wait
        # for the GPU every step (the progress bar reads it only every LOSS_SHOWN_EVERY steps).
        total, steps = torch.zeros((), dtype=torch.float64, device=device), 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                   total=len(batches) if hasattr(batches, "__len__") else None)
        for batch in bar:
            loss = train_step(model, optimizer, batch, config, device, log_q=log_q,
                              generator=generator, amp=amp)
            if average is not None:
                average.update_parameters(model)
            total += loss.double()
            steps += 1
            if device.type == "cpu" or steps % LOSS_SHOWN_EVERY == 0:
                bar.set_postfix(loss=f"{float(total) / steps:.3f}")
        record: dict = {"epoch": epoch, "loss": round(float(total) / max(steps, 1), 4)}
        model.eval()
        scored.eval()
        if validate is not None:
            record.update({f"valid_{k}": round(v, 4) for k, v in validate(scored).items()})
            score = record["valid_recall@10"]
            if score > best_score:
                best_score, best_state, stale = score, copy.deepcopy(scored.state_dict()), 0
                record["best"] = True
            else:
                stale += 1
        log.info("epoch %s", record)
        records.append(record)
        if checkpoint_dir is not None:
            save_checkpoint(model, optimizer, config, records, checkpoint_dir / "last.pt")
            if record.get("best"):
                save_checkpoint(scored, optimizer, config, records, checkpoint_dir / "best.pt")
        if validate is not None and stale >= config.patience:
            log.info("early stop: no better validation recall@10 for %d epochs", stale)
            break
    if best_state is None and average is not None:
        best_state = average.module.state_dict()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return records


def save_checkpoint(model: Towers, optimizer: torch.optim.Optimizer | None, config: TrainConfig,
                    records: list[dict], path: Path) -> None:
    """``optimizer`` None: an ensemble's (each member's optimiser is in its own checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(),
                "optimizer": {} if optimizer is None else optimizer.state_dict(),
                "config": config.as_dict(), "epochs": records}, path)


def load_checkpoint(model: Towers, path: Path) -> dict:
    """Load weights saved by ``save_checkpoint`` into ``model``; returns the checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    return checkpoint
