"""Model rollouts on a live Triton (explicit model control): publish, load, smoke, shadow, promote,
roll back, retire — each step logged, idempotent, with a dry run.

    python -m export.triton.rollout --repository model_repository --triton-url 127.0.0.1:8000 status
    python -m export.triton.rollout ... publish --from build/candidate_repository   # -> version N
    python -m export.triton.rollout ... promote N --shadow-requests build/user_histories.json \
        --min-overlap 0.3
    python -m export.triton.rollout ... rollback
    python -m export.triton.rollout ... retire N

How versions are served. The versioned models (``features.contract.VERSIONED_MODELS``) keep the live and
the candidate (or previous) version loaded side by side (``version_policy: specific``, rewritten here).
Which one answers is ``rollout.json`` at the repository root: gateways poll it and pin every request to the
live version together with that version's catalog, so no answer ever mixes two versions and switching is
instant in both directions. The ``recommend`` ensemble's steps are pinned to the live version in its config
(one config for the model, not one per version), for clients that call it without a version; that pin moves
at promote/rollback, before any gateway has read the new pointer, so a gateway never relies on it: asked
for version N, it runs the ensemble's steps itself, each pinned to N (``gateway/triton_client.py``, issue
15). A failed check leaves everything as it was: the candidate stays loaded but is never live.

Every step that changes the repository holds ``.rollout.lock`` (``export/triton/locking.py``) from
reading the state to writing it, so two commands at once queue instead of losing one's update;
files are replaced whole, never rewritten in place. ``status`` reads without the lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc

from export.triton import ab
from export.triton.config_files import REFERENCE_FILE, read_config, write_config
from export.triton.locking import DEFAULT_LOCK_TIMEOUT_S, LockTimeout, StepLock, exclusive
from export.triton.rollout_state import (
    RolloutError,
    RolloutState,
    ShadowReport,
    SmokeReport,
    percentiles,
    tree_hash,
    versions_on_disk,
)
from features import contract as sig
from features.behaviour import Step, steps_of
from features.catalog import ItemCatalog
from features.model_inputs import ModelInputs, build_inputs, infer_input, ranked_items
from features.user_state import snapshot_events

log = logging.getLogger("export.triton.rollout")


class RolloutLocked(RolloutError, LockTimeout):
    """Another rollout command held the repository's lock for longer than ``lock_timeout_s``."""


class Rollout:
    def __init__(self, repository: Path, triton_url: str, *, dry_run: bool = False,
                 timeout_s: float = 120, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.repository = Path(repository)
        self.dry_run = dry_run
        self.client = httpclient.InferenceServerClient(triton_url, network_timeout=timeout_s,
                                                       connection_timeout=timeout_s)
        self.state = RolloutState.read(self.repository)
        self._names: sig.TensorNames | None = None  # recommend_fused's, read by the first check
        # Steps that change the repository hold its lock (promote: through load, smoke, shadow),
        # on the state as it is once they hold it. A dry run changes nothing and takes none.
        self.lock = StepLock(self.repository, timeout_s=lock_timeout_s, enabled=not dry_run,
                             error=RolloutLocked,
                             on_acquire=lambda: setattr(self, "state", RolloutState.read(self.repository)))

    # --- bookkeeping --------------------------------------------------------------------------

    def _record(self, action: str, **details: object) -> None:
        entry = {"at_ms": int(time.time() * 1000), "action": action, **details}
        log.info("%s%s %s", "[dry run] " if self.dry_run else "", action,
                 json.dumps(details, sort_keys=True))
        if not self.dry_run:
            self.state.history.append(entry)
            self.state.write(self.repository)

    def status(self) -> dict:
        ready = {m: {str(v): self._ready(m, v) for v in sorted(versions_on_disk(self.repository / m))}
                 for m in sig.versioned_models(self.repository)}
        return {"live": self.state.live, "previous": self.state.previous, "ready": ready,
                "recent": self.state.history[-5:]}

    def _ready(self, name: str, version: int) -> bool:
        try:
            return bool(self.client.is_model_ready(name, str(version)))
        except Exception:  # noqa: BLE001 - any failure to answer means "not ready"
            return False

    # --- publish ------------------------------------------------------------------------------

    @exclusive
    def publish(self, source: Path) -> int:
        """Copy the newest version of an export into this repository as the next version.
        Publishing the same export twice returns the version it got the first time."""
        if problem := sig.missing_models(self.repository, source := Path(source)):  # older exports
            raise RolloutError(problem)
        src_version = sig.latest_version(source / sig.RETRIEVE)
        src_dirs = [source / name / str(src_version) for name in sig.VERSIONED_MODELS]
        digest = tree_hash(src_dirs)
        if digest in self.state.published:
            version = self.state.published[digest]
            log.info("already published as version %d", version)
            return version
        for name in (*sig.VERSIONED_MODELS, sig.RECOMMEND):
            live_cfg, new_cfg = (read_config(root / name / "config.pbtxt")
                                 for root in (self.repository, source))
            for cfg in (live_cfg, new_cfg):  # an older export did not record the contract names
                cfg.ClearField("version_policy")
                for key in (sig.CONTRACT_INPUTS, sig.CONTRACT_OUTPUTS):
                    cfg.parameters.pop(key, None)
                if cfg.HasField("ensemble_scheduling"):
                    for step in cfg.ensemble_scheduling.step:
                        step.model_version = -1
            if live_cfg != new_cfg:
                raise RolloutError(f"{name}: the candidate's config.pbtxt differs from the live one "
                                   "(shapes or batching); that needs a new model, not a version")
        version = 1 + max(max(versions_on_disk(self.repository / n)) for n in sig.VERSIONED_MODELS)
        if not self.dry_run:
            # The pointer first: a gateway must never take the new directory for the newest live one.
            self.state.write(self.repository)
            # And Triton must not either: a config still on "latest" would serve the unchecked
            # candidate after a restart between publish and promote.
            self._pin_latest_policies(self.state.live)
            for name, src in zip(sig.VERSIONED_MODELS, src_dirs, strict=True):
                # Copied aside, renamed into place whole: a crash leaves no half version behind.
                partial = self.repository / name / f".{version}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(src, partial)
                if name == sig.RETRIEVE:
                    serving = partial / sig.SERVING_FILE
                    serving.write_text(json.dumps({**json.loads(serving.read_text()), "version": version},
                                                  indent=2))
                os.replace(partial, self.repository / name / str(version))
            self.state.published[digest] = version
        self._record("publish", version=version, source=str(source), source_version=src_version)
        return version

    def _pin_latest_policies(self, live: int) -> None:
        """Configs written by the exporter serve the newest version (``latest: 1``); turn those into
        ``specific: [live]``. Configs a rollout has already pinned are left as they are."""
        for name in sig.versioned_models(self.repository):
            config = read_config(self.repository / name / "config.pbtxt")
            if config.version_policy.WhichOneof("policy_choice") in (None, "latest"):
                self._write_policy(name, {live})

    def _write_policy(self, name: str, versions: set[int]) -> None:
        """``version_policy: specific`` with exactly ``versions`` in ``name``'s config (unchanged
        configs are not rewritten)."""
        path = self.repository / name / "config.pbtxt"
        config = read_config(path)
        policy = mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=sorted(versions)))
        if config.version_policy != policy:
            config.version_policy.CopyFrom(policy)
            write_config(config, path.parent)

    # --- load / retire ------------------------------------------------------------------------

    def _serve_versions(self, versions: set[int]) -> None:
        """Make exactly ``versions`` loaded for every versioned model, the ensemble pinned to the
        live one. Configs are written first and the ensemble loaded first: loading it reloads its
        steps from the new configs in one go, so it never sees a candidate as "latest"."""
        if not self.dry_run:
            for name in sig.versioned_models(self.repository):
                self._write_policy(name, versions)
        self._point_ensemble_at(self.state.live)
        if self.dry_run:
            return
        for name in sig.versioned_models(self.repository):
            self.client.load_model(name)
            missing = [v for v in versions if not self._ready(name, v)]
            if missing:
                raise RolloutError(f"{name}: versions {missing} did not become ready")

    @exclusive
    def load(self, version: int) -> None:
        if not (self.repository / sig.RETRIEVE / str(version)).is_dir():
            raise RolloutError(f"version {version} is not in {self.repository}: publish it first")
        keep = self.state.serving() | {version} | ({self.state.previous} if self.state.previous else set())
        self._serve_versions(keep)
        self._record("load", version=version, loaded=sorted(keep))

    @exclusive
    def retire(self, version: int) -> None:
        if version == self.state.live:
            raise RolloutError(f"version {version} is live: promote or roll back first")
        if version in self.state.serving():
            raise RolloutError(f"version {version} is an arm of the running experiment: `ab stop` first")
        keep = self.state.serving() | ({self.state.previous} if self.state.previous else set())
        keep.discard(version)
        self._serve_versions(keep)
        self.state.previous = None if self.state.previous == version else self.state.previous
        self._record("retire", version=version, loaded=sorted(keep))

    # --- checks -------------------------------------------------------------------------------

    def _infer(self, version: int, inputs: ModelInputs) -> tuple[np.ndarray, np.ndarray, float]:
        """``recommend_fused``'s answer (tensors named by its config, either target) and latency."""
        if self._names is None:
            self._names = sig.tensor_names(self.client.get_model_config(sig.RECOMMEND_FUSED))
        started = time.perf_counter()
        result = self.client.infer(sig.RECOMMEND_FUSED, inputs.infer_inputs(httpclient, self._names.inputs),
                                   model_version=str(version))
        elapsed_ms = (time.perf_counter() - started) * 1000
        return (*(result.as_numpy(self._names.outputs[n]) for n in (sig.ITEM_INDEX, sig.SCORE)), elapsed_ms)

    @exclusive
    def smoke(self, version: int) -> SmokeReport:
        """Triton's answers for the exporter's reference requests equal PyTorch's at export time."""
        path = self.repository / sig.RETRIEVE / str(version) / REFERENCE_FILE
        if not path.is_file():
            raise RolloutError(f"no {REFERENCE_FILE} for version {version} (exported with an ANN "
                               "index, or by an older exporter): nothing to smoke-check against")
        ref = json.loads(path.read_text())
        if "history_types" not in ref:
            raise RolloutError(f"{path} has no history_types: version {version} predates the "
                               "behaviour-aware contract (HISTORY_TYPES); re-export it")
        history = np.array(ref["history"], dtype=np.int64)
        inputs = ModelInputs(history=history, history_types=np.array(ref["history_types"], dtype=np.int64),
                             exclude=np.array(ref["exclude"], dtype=np.int64),
                             k=np.full((len(history), 1), ref["k"], dtype=np.int32))
        items, scores, _ = self._infer(version, inputs)
        report = SmokeReport(version, len(history), *_agreement(items, scores, ref))
        if "similar" in ref and (self.repository / sig.SIMILAR_ITEMS).is_dir():
            similar = self._smoke_similar(version, ref["similar"])
            report.similar_overlap, report.similar_max_score_diff = similar
        self._record("smoke", version=version, ok=report.ok, id_overlap=report.id_overlap,
                     max_score_diff=report.max_score_diff, similar_overlap=report.similar_overlap,
                     similar_max_score_diff=report.similar_max_score_diff)
        return report

    def _smoke_similar(self, version: int, ref: dict) -> tuple[float, float]:
        """``similar_items``' answers to the exporter's item queries against its reference."""
        names = sig.tensor_names(self.client.get_model_config(sig.SIMILAR_ITEMS))
        arrays = {sig.ITEM: np.array(ref["item"], dtype=np.int64),
                  sig.EXCLUDE: np.array(ref["exclude"], dtype=np.int64),
                  sig.K: np.full((len(ref["item"]), 1), ref["k"], dtype=np.int32)}
        result = self.client.infer(sig.SIMILAR_ITEMS, [infer_input(httpclient, names.inputs[n], a)
                                                       for n, a in arrays.items()],
                                   model_version=str(version))
        return _agreement(*(result.as_numpy(names.outputs[n]) for n in (sig.ITEM_INDEX, sig.SCORE)), ref)

    @exclusive
    def shadow(self, version: int, histories: dict[str, list[str]], *, requests: int = 200,
               k: int = 10) -> ShadowReport:
        """Recorded requests (user histories) against the live and the candidate version, each with
        its own catalog, as the gateway would send them: top-k overlap and latency. A history is
        ``features.behaviour.Step``s (``read_shadow_requests``) or plain item ids, which
        ``build_inputs`` sends with type "unknown"."""
        catalogs = {v: ItemCatalog.from_json(self.repository / sig.RETRIEVE / str(v) / sig.CATALOG_FILE)
                    for v in (self.state.live, version)}
        seq_len = int(json.loads((self.repository / sig.RETRIEVE / str(version) / sig.SERVING_FILE)
                                 .read_text())["sequence_length"])
        users = sorted(histories)[:requests]
        latencies: dict[int, list[float]] = {self.state.live: [], version: []}
        overlaps = []
        for user in users:
            answers = {}
            for v, catalog in catalogs.items():
                inputs = build_inputs(histories[user], catalog, seq_len, k, exclude=histories[user])
                items, scores, ms = self._infer(v, inputs)
                latencies[v].append(ms)
                answers[v] = {item.item_id for item, _ in ranked_items(items[0], scores[0], catalog)}
            overlaps.append(len(answers[self.state.live] & answers[version]) / k)
        report = ShadowReport(self.state.live, version, len(users), k, float(np.mean(overlaps)),
                              percentiles(latencies[self.state.live]), percentiles(latencies[version]))
        self._record("shadow", version=version, requests=len(users), overlap_at_k=report.overlap_at_k,
                     live_ms=report.live_ms, candidate_ms=report.candidate_ms)
        return report

    # --- promote / rollback -------------------------------------------------------------------

    def _point_ensemble_at(self, version: int) -> None:
        """Pin the ensemble's steps to ``version`` (Triton rereads its config on ``load``), for
        unversioned callers. Not atomic with ``rollout.json``: see the module docstring."""
        path = self.repository / sig.RECOMMEND / "config.pbtxt"
        config = read_config(path)
        for step in config.ensemble_scheduling.step:
            step.model_version = version
        if not self.dry_run:
            write_config(config, path.parent)
            self.client.load_model(sig.RECOMMEND)

    def _switch(self, live: int, previous: int | None, action: str, **details: object) -> None:
        self._point_ensemble_at(live)
        old = self.state.live
        if not self.dry_run:
            self.state.live, self.state.previous = live, previous
        self._record(action, version=live, was=old, **details)

    @exclusive
    def promote(self, version: int, *, shadow_histories: dict[str, list[str]] | None = None,
                min_overlap: float | None = None, skip_checks: bool = False) -> None:
        if version == self.state.live:
            log.info("version %d is already live", version)
            return
        if self.state.experiment is not None:
            raise RolloutError(f"experiment {self.state.experiment['name']!r} is running: end it with "
                               "`ab stop --promote ARM` (or `ab stop`) first")
        self.load(version)
        checks: dict[str, object] = {}
        if not skip_checks and not self.dry_run:
            smoke = self.smoke(version)
            if not smoke.ok:
                raise RolloutError(f"smoke check failed for version {version}: {smoke}")
            checks["smoke"] = "ok"
            if shadow_histories:
                shadow = self.shadow(version, shadow_histories)
                checks["overlap_at_k"] = shadow.overlap_at_k
                if min_overlap is not None and shadow.overlap_at_k < min_overlap:
                    raise RolloutError(f"shadow overlap@{shadow.k} {shadow.overlap_at_k:.3f} is below "
                                       f"{min_overlap}: version {self.state.live} stays live")
        self._switch(version, self.state.live, "promote", **checks)

    @exclusive
    def rollback(self) -> int:
        """Back to the previous version; during an experiment, back to the live version for
        everyone (the experiment ends, the live version stays)."""
        if self.state.experiment is not None:
            return self.end_experiment("rollback")
        previous = self.state.previous
        if previous is None:
            raise RolloutError("no previous version to roll back to")
        if not self.dry_run and not all(self._ready(n, previous)
                                        for n in sig.versioned_models(self.repository)):
            self._serve_versions({self.state.live, previous})
        self._switch(previous, self.state.live, "rollback")
        return previous


    def end_experiment(self, action: str, winner: int | None = None) -> int:
        """End the running experiment in one write of the pointer: ``winner`` (default: the live
        version) serves everyone. Called under the lock (``rollback``, ``ab.stop``)."""
        name = self.state.experiment["name"]
        winner = self.state.live if winner is None else winner
        if not self.dry_run:
            self.state.experiment = None
        if winner != self.state.live:
            self._switch(winner, self.state.live, action, experiment=name)
        else:
            self._record(action, version=winner, experiment=name, ended="experiment")
        return winner


def _agreement(items: np.ndarray, scores: np.ndarray, ref: dict) -> tuple[float, float]:
    """(mean share of the reference top-k returned, largest score difference) of an answer."""
    want_items, want_scores = np.array(ref["item_index"]), np.array(ref["score"])
    overlap = np.mean([len(set(a) & set(b)) / max(ref["k"], 1)
                       for a, b in zip(items, want_items, strict=True)])
    # Excluded items fill a top-k longer than what is left at -inf on both sides: equal, and
    # inf - inf would be nan, which fails every comparison.
    with np.errstate(invalid="ignore"):
        diff = np.where(scores == want_scores, 0.0, np.abs(scores - want_scores))
    return float(overlap), float(np.max(diff, initial=0.0))


def read_shadow_requests(path: Path) -> dict[str, list[Step]]:
    """A user-history snapshot file as each user's steps, in the order and with the types the
    feature stores would hand the gateway (see ``features.user_state.snapshot_events``)."""
    return {user: steps_of(snapshot_events(user, rows))
            for user, rows in json.loads(path.read_text()).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.triton.rollout",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--triton-url", default="127.0.0.1:8000", help="Triton's HTTP endpoint")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    parser.add_argument("--lock-timeout-s", type=float, default=DEFAULT_LOCK_TIMEOUT_S,
                        help="how long to wait for another rollout command to finish (then exit 2)")
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("status")
    publish = sub.add_parser("publish", help="copy an export's newest version in as the next version")
    publish.add_argument("--from", dest="source", type=Path, required=True)
    for name in ("load", "smoke", "shadow", "promote", "retire"):
        step = sub.add_parser(name)
        step.add_argument("version", type=int)
        if name in ("shadow", "promote"):
            step.add_argument("--shadow-requests", type=Path,
                              help="a user-history snapshot, JSON {user: rows}, rows bare item ids "
                                   "or typed events (e.g. build/user_histories.json)")
            step.add_argument("--requests", type=int, default=200)
        if name == "promote":
            step.add_argument("--min-overlap", type=float)
            step.add_argument("--skip-checks", action="store_true")
    sub.add_parser("rollback")
    ab.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    rollout = Rollout(args.repository, args.triton_url, dry_run=args.dry_run,
                      lock_timeout_s=args.lock_timeout_s)
    histories = read_shadow_requests(args.shadow_requests) if getattr(args, "shadow_requests", None) else None
    try:
        if args.step == "status":
            print(json.dumps(rollout.status(), indent=2))
        elif args.step == "publish":
            print(rollout.publish(args.source))
        elif args.step in ("load", "retire"):
            getattr(rollout, args.step)(args.version)
        elif args.step == "smoke":
            report = rollout.smoke(args.version)
            print(json.dumps(report.__dict__))
            return 0 if report.ok else 1
        elif args.step == "shadow":
            if not histories:
                parser.error("shadow needs --shadow-requests")
            print(json.dumps(rollout.shadow(args.version, histories, requests=args.requests).__dict__))
        elif args.step == "promote":
            rollout.promote(args.version, shadow_histories=histories, min_overlap=args.min_overlap,
                            skip_checks=args.skip_checks)
        elif args.step == "rollback":
            print(rollout.rollback())
        elif args.step == "ab":
            print(ab.run(rollout, args))
    except RolloutError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
