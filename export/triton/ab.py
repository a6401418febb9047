"""A/B experiments between the live version and a candidate: the rollout CLI's ``ab`` steps.

    python -m export.triton.rollout ... ab start 4 --live-weight 0.9 --candidate-weight 0.1
    python -m export.triton.rollout ... ab status --metrics-url http://127.0.0.1:8090
    python -m export.triton.rollout ... ab stop --promote candidate     # or: ab stop (live stays)

``start`` loads the candidate next to the live version, smoke-checks it, then writes the arms into
the rollout pointer; gateways pick them up on their next poll and pin every user to an arm by a
stable hash of the user id (``features.experiment``). ``stop`` ends the experiment in one write of
the pointer: everyone back on the live version, or on the promoted arm's version, which becomes
live (the old live one is then ``previous``, for ``rollback``). ``rollback`` during an experiment
ends it and keeps the live version. Weights outside [0, 1], or not summing to 1, are refused before
anything changes.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request

from export.triton.rollout_state import RolloutError
from features.experiment import LIVE_ARM, Arm, Experiment, InvalidExperiment
from features.significance import compare_proportions

CANDIDATE_ARM = "candidate"
# What `ab status` compares: each rate is a share of the arm's lists (impressions), counted by the
# online-metrics service under these names (its JSON: keys[].totals).
PROPORTIONS = {"ctr_at_k": "clicked_at_k_lists", "add_to_cart_rate": "carted_lists",
               "purchase_rate": "purchased_lists"}


def start(rollout, candidate: int, *, live_weight: float, candidate_weight: float,
          name: str | None = None, skip_checks: bool = False) -> Experiment:
    """Serve ``candidate`` to ``candidate_weight`` of users, the live version to the rest.
    ``rollout``: an ``export.triton.rollout.Rollout``; raises its ``RolloutError``."""
    with rollout.lock.held(f"ab start {candidate}"):
        state = rollout.state
        if state.experiment is not None:
            raise RolloutError(f"experiment {state.experiment['name']!r} is already running: "
                               "`ab stop` it first")
        if candidate == state.live:
            raise RolloutError(f"version {candidate} is live: an experiment needs another version")
        try:
            experiment = Experiment(name or f"v{state.live}-vs-v{candidate}-{int(time.time())}",
                                    (Arm(LIVE_ARM, state.live, live_weight),
                                     Arm(CANDIDATE_ARM, candidate, candidate_weight)),
                                    int(time.time() * 1000))
        except InvalidExperiment as exc:
            raise RolloutError(f"not started, nothing changed: {exc}") from None
        rollout.load(candidate)
        if not skip_checks and not rollout.dry_run:
            smoke = rollout.smoke(candidate)
            if not smoke.ok:
                raise RolloutError(f"smoke check failed for version {candidate}: {smoke}; not started")
        if not rollout.dry_run:
            state.experiment = experiment.to_dict()
        rollout._record("ab_start", experiment=experiment.to_dict())
        return experiment


def stop(rollout, promote: str | None = None) -> int:
    """End the running experiment; ``promote``: the arm whose version becomes live. The live
    version after it."""
    with rollout.lock.held("ab stop"):
        experiment = rollout.state.running
        if experiment is None:
            raise RolloutError("no experiment is running")
        try:
            winner = experiment.arm(promote).version if promote else rollout.state.live
        except InvalidExperiment as exc:
            raise RolloutError(f"not stopped, nothing changed: {exc}") from None
        return rollout.end_experiment("ab_stop", winner)


def status(rollout, metrics_url: str | None, *, surface: str = "feed", confidence: float = 0.95,
           timeout_s: float = 5.0) -> dict:
    """The running experiment, and with ``metrics_url`` (the online-metrics service) each arm's
    counts and every other arm's difference to the live arm, with a confidence interval and the
    two-proportion test's p-value."""
    state = rollout.state
    experiment = state.running
    report: dict = {"live": state.live, "experiment": experiment.to_dict() if experiment else None}
    if experiment is None or metrics_url is None:
        return report
    try:
        with urllib.request.urlopen(f"{metrics_url.rstrip('/')}/v1/online-metrics", timeout=timeout_s) as r:
            snapshot = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        report["metrics_error"] = f"the online-metrics service at {metrics_url} did not answer: {exc}"
        return report
    arms = {arm.name: arm_totals(snapshot, surface, arm) for arm in experiment.arms}
    report["surface"] = surface
    report["arms"] = arms
    base = arms[LIVE_ARM]
    report["comparisons"] = {
        name: {rate: compare_proportions(base[lists], base["impressions"], totals[lists],
                                         totals["impressions"], confidence=confidence).as_dict()
               for rate, lists in PROPORTIONS.items()}
        for name, totals in arms.items() if name != LIVE_ARM}
    return report


def arm_totals(snapshot: dict, surface: str, arm: Arm) -> dict:
    """One arm's counts from the online-metrics JSON (``GET /v1/online-metrics``): the lists of
    its surface, arm name and version, with what they led to."""
    counted = ("impressions", *PROPORTIONS.values(), "revenue")
    totals: dict = {"version": arm.version, "weight": arm.weight, **dict.fromkeys(counted, 0)}
    for key in snapshot.get("keys", []):
        # the service keys versions as text (a record's version is whatever the gateway wrote)
        if (key.get("surface"), key.get("arm"), str(key.get("model_version"))) == \
                (surface, arm.name, str(arm.version)):
            for name in counted:
                totals[name] += key["totals"].get(name, 0)
    if totals["impressions"]:
        totals["revenue_per_mille"] = round(totals["revenue"] * 1000 / totals["impressions"], 6)
    return totals


def _open_unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    ab = sub.add_parser("ab", help="A/B experiment: the live version against a candidate")
    steps = ab.add_subparsers(dest="ab_step", required=True)
    begin = steps.add_parser("start", help="split users between the live version and CANDIDATE")
    begin.add_argument("candidate", type=int, help="the candidate version (published)")
    begin.add_argument("--live-weight", type=float, required=True, help="share of users, in [0, 1]")
    begin.add_argument("--candidate-weight", type=float, required=True,
                       help="share of users, in [0, 1]; the two weights sum to 1")
    begin.add_argument("--name", help="the experiment's name (users are hashed with it)")
    begin.add_argument("--skip-checks", action="store_true")
    report = steps.add_parser("status", help="the arms, and their metrics with --metrics-url")
    report.add_argument("--metrics-url", help="the online-metrics service, e.g. http://127.0.0.1:8090")
    report.add_argument("--surface", default="feed")
    report.add_argument("--confidence", type=_open_unit_interval, default=0.95,
                        help="of the difference's interval, in (0, 1)")
    end = steps.add_parser("stop", help="end the experiment (everyone on the live version)")
    end.add_argument("--promote", metavar="ARM", help="make this arm's version live (e.g. candidate)")


def run(rollout, args: argparse.Namespace) -> str:
    """One ``ab`` step from the command line; what to print."""
    if args.ab_step == "start":
        experiment = start(rollout, args.candidate, live_weight=args.live_weight,
                           candidate_weight=args.candidate_weight, name=args.name,
                           skip_checks=args.skip_checks)
        return json.dumps(experiment.to_dict(), indent=2)
    if args.ab_step == "status":
        return json.dumps(status(rollout, args.metrics_url, surface=args.surface,
                                 confidence=args.confidence), indent=2)
    return str(stop(rollout, args.promote))
