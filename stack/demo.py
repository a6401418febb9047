"""`make demo` / `make serve`: the whole data flow on MovieLens-100K, for real.

Trains and exports the towers, starts Kafka and Triton, starts the gateway (with the embedded
feature-service consumer) and the online-metrics service, then shows one user's recommendations
before and after a few posted events, and a click on the last list counted for it by the online
metrics. ``--serve`` keeps everything up until Ctrl-C instead, with the live demo page
(``/demo``, gateway/static/) opened in a browser when there is a display (``--no-browser``: not).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from export.evaluation.report import format_table
from export.pipeline import SNAPSHOT_FILE, run
from export.train import TrainConfig
from features import contract as sig
from features.catalog import ItemCatalog
from gateway.served_model import load_served_model
from stack.gateway import GatewayProcess
from stack.kafka import KafkaBroker
from stack.online_metrics import OnlineMetricsProcess
from stack.triton import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTS_TOPIC = "user-events"
IMPRESSIONS_TOPIC = "impressions"


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def show(title: str, recs: dict, catalog: ItemCatalog) -> None:
    flags = [f for f in ("cold_start", "degraded") if recs.get(f)]
    print(f"\n{title}  (model v{recs['model_version']}{', ' + ', '.join(flags) if flags else ''})")
    for rank, item in enumerate(recs["items"], 1):
        categories = ", ".join(catalog.item_at(catalog.index_of(item["item_id"])).categories)
        score = f"{item['score']:.3f}" if item["score"] is not None else "  -  "
        print(f"  {rank:>2}. {score}  {item['title'][:44]:<44} [{categories}]")


def pick_items(catalog: ItemCatalog, popular: list[str], seen: set[str], genre: str, n: int) -> list[str]:
    """The ``n`` most popular items of ``genre`` the user has not interacted with."""
    return [i for i in popular
            if i not in seen and genre in catalog.item_at(catalog.index_of(i)).categories][:n]


def demo_page_url(gateway_url: str, user: str) -> str:
    return f"{gateway_url}/demo?user={urllib.parse.quote(user, safe='')}"


def open_in_browser(url: str) -> bool:
    """Open ``url`` in a graphical browser when there is a display; never block, never fall back to
    a text browser that would take over this terminal."""
    if sys.platform not in ("darwin", "win32") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if type(browser) is webbrowser.GenericBrowser:  # lynx, w3m, www-browser: console browsers
        return False
    threading.Thread(target=browser.open, args=(url,), daemon=True).start()
    return True


def show_outcome(gateway_url: str, metrics: OnlineMetricsProcess, user: str, recs: dict) -> None:
    """Click ``recs``' top item, naming the list, and wait for the online metrics to count it."""
    top = recs["items"][0]["item_id"]
    status, body = http("POST", f"{gateway_url}/v1/events", {
        "user_id": user, "item_id": top, "event_type": "click",
        "context": {"request_id": recs["request_id"], "position": "0"}})
    assert status == 202, body
    deadline = time.perf_counter() + 20
    while time.perf_counter() < deadline:
        keys = [k for k in metrics.get_json("/v1/online-metrics")["keys"] if k["surface"] == "feed"]
        if sum(k["totals"]["clicks"] for k in keys):
            break
        time.sleep(0.2)
    print(f"\nA click on the last list's top item, sent with its request_id -> online metrics "
          f"({metrics.url}/):")
    for key in keys:
        totals, rates = key["totals"], key["rates"]
        print(f"  {key['surface']} v{key['model_version']}: {totals['impressions']} lists, "
              f"{totals['clicked_lists']} clicked (CTR {rates['ctr']:.0%}), {totals['clicks']} clicks")


def demo(gateway_url: str, repository: Path, artifacts: Path, user: str, genre: str,
         metrics: OnlineMetricsProcess) -> None:
    served = load_served_model(repository)
    catalog, popular = served.catalog, served.popular_items
    # snapshot rows are [event_id, item_id, event_type, ts_ms] (export.data.Dataset.snapshot_rows)
    seen = {row[1] for row in json.loads((artifacts / SNAPSHOT_FILE).read_text()).get(user, [])}

    status, before = http("GET", f"{gateway_url}/v1/users/{user}/recommendations?k=10")
    assert status == 200, before
    show(f"User {user}: recommendations before", before, catalog)

    items = pick_items(catalog, popular, seen, genre, 3)
    events = list(zip(("view", "cart", "purchase"), items, strict=False))
    print(f"\nPosting events for user {user}: " + ", ".join(
        f"{t} '{catalog.item_at(catalog.index_of(i)).title}'" for t, i in events))
    posted_at = time.perf_counter()
    for event_type, item in events:
        status, body = http("POST", f"{gateway_url}/v1/events",
                            {"user_id": user, "item_id": item, "event_type": event_type})
        assert status == 202, body
    after = before
    while time.perf_counter() - posted_at < 15:
        _, after = http("GET", f"{gateway_url}/v1/users/{user}/recommendations?k=10")
        if after["features_updated_at_ms"] != before["features_updated_at_ms"] and not (
                set(items) & {i["item_id"] for i in after["items"]}):
            break
        time.sleep(0.05)
    visible_ms = (time.perf_counter() - posted_at) * 1000
    show(f"User {user}: recommendations after 3 {genre} events (visible after {visible_ms:.0f} ms)",
         after, catalog)
    changed = len({i["item_id"] for i in after["items"]} - {i["item_id"] for i in before["items"]})
    print(f"\n{changed} of 10 recommendations changed.")
    if changed == 0:
        raise SystemExit("the events did not change the recommendations")

    _, cold = http("GET", f"{gateway_url}/v1/users/brand-new-visitor/recommendations?k=5")
    show("An unknown user (cold start: trending in the stream, then popular items)", cold, catalog)
    status, error = http("POST", f"{gateway_url}/v1/events",
                         {"user_id": user, "item_id": "no-such-item", "event_type": "view"})
    print(f"\nAn event for an unknown item -> HTTP {status}: {error['error']['message']}")
    show_outcome(gateway_url, metrics, user, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the stack up until Ctrl-C")
    parser.add_argument("--skip-train", action="store_true", help="reuse the exported repository")
    # Fewer than the documented evaluation's 12: the demo should train in about a minute.
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--user", default="1")
    parser.add_argument("--genre", default="Horror")
    parser.add_argument("--gateway-port", type=int, default=None)
    parser.add_argument("--no-browser", action="store_true",
                        help="with --serve: do not open the demo page in a browser")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines drown the demo

    repository, artifacts = REPO_ROOT / "model_repository", REPO_ROOT / "build"
    started = time.perf_counter()
    if not args.skip_train or not (repository / sig.RECOMMEND).is_dir():
        result = run("ml-100k", repository, artifacts, TrainConfig(epochs=args.epochs))
        print("\n" + format_table(result.report) + "\n")
    with KafkaBroker(artifacts / "kafka") as kafka, \
            TritonServer(repository, log_path=artifacts / "logs" / "tritonserver.log") as triton:
        kafka.create_topics([EVENTS_TOPIC, f"{EVENTS_TOPIC}.dlq", IMPRESSIONS_TOPIC], partitions=3)
        settings = {
            "triton_grpc_url": triton.grpc_url,
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "model_repository": str(repository),
            "snapshot_path": str(artifacts / SNAPSHOT_FILE),
        }
        metrics = OnlineMetricsProcess({"kafka_bootstrap_servers": kafka.bootstrap_servers,
                                        "impressions_topic": IMPRESSIONS_TOPIC, "events_topic": EVENTS_TOPIC},
                                       log_path=artifacts / "logs" / "online_metrics.log")
        with GatewayProcess(settings, port=args.gateway_port,
                            log_path=artifacts / "logs" / "gateway.log") as gateway, metrics:
            print(f"Kafka ready after {kafka.ready_after_s:.1f} s, Triton after "
                  f"{triton.ready_after_s:.1f} s, gateway after {gateway.ready_after_s:.1f} s")
            page = demo_page_url(gateway.url, args.user)
            print(f"Live demo page: {page}" + ("" if args.serve else
                                                "  (up while this runs; `make serve` keeps it up)"))
            if args.serve:
                print(f"\nServing.  gateway {gateway.url}   (docs: {gateway.url}/docs)\n"
                      f"  curl '{gateway.url}/v1/users/1/recommendations?k=10'\n"
                      f"  curl -X POST {gateway.url}/v1/events -H 'Content-Type: application/json' "
                      "-d '{\"user_id\":\"1\",\"item_id\":\"50\",\"event_type\":\"click\"}'\n"
                      f"  Triton gRPC {triton.grpc_url}, HTTP {triton.http_url}; "
                      f"Kafka {kafka.bootstrap_servers}\n"
                      f"  live demo page {page}\n  online metrics {metrics.url}/ (JSON: "
                      f"{metrics.url}/v1/online-metrics)\nCtrl-C to stop.")
                if not args.no_browser and open_in_browser(page):
                    print(f"Opened {page} in a browser.")
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                try:
                    stop.wait()
                except KeyboardInterrupt:
                    pass
            else:
                demo(gateway.url, repository, artifacts, args.user, args.genre, metrics)
    print(f"\nStack stopped cleanly. Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
