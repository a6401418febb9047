"""Does Triton survive callers that give up? Cancelled gRPC calls vs. calls left to finish.

    python perf/triton_cancellation.py --out perf/results/cancellation [--repository DIR] [--repeats 3]

The gateway answers every request within its deadline, so slow model calls are abandoned all the
time. How they are abandoned decides whether the server lives: Triton 2.51 (the bundled server)
crashes when a gRPC cancellation races the response. Per repeat and per mode, a fresh Triton serves
``recommend_fused`` while ``--rounds`` rounds of ``--concurrency`` requests (built by
features.model_inputs from catalog items) are given up after a random 0.5-4 ms, about the call's
own latency, so that answers and cancellations race:

* ``client_deadline``: the gRPC client deadline fires (``client_timeout``);
* ``caller_cancels``: the awaiting coroutine is cancelled, which cancels the RPC;
* ``left_to_finish``: what gateway/triton_client.py does: the caller stops waiting on a shielded
  call, which runs to its end (long client deadline as a backstop).

Writes ``cancellation.json`` and ``cancellation.csv``: for every run, whether the server survived
(still alive, stopped cleanly when asked, no crash signal in its log), how many requests were sent,
and the signal lines of its log. Exits 1 if ``left_to_finish``
ever lost the server (the gateway's guarantee), not because the other modes crash: that is what
this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tritonclient.grpc.aio as grpcclient  # noqa: E402

from features import contract as sig  # noqa: E402
from features.model_inputs import build_inputs  # noqa: E402
from gateway.served_model import ServedModel, load_served_model  # noqa: E402
from perf.harness import environment, export_fresh, finish, write_csv, write_json  # noqa: E402
from stack.triton import TritonServer  # noqa: E402

MODES = ("client_deadline", "caller_cancels", "left_to_finish")
CSV_COLUMNS = ["mode", "repeat", "survived", "alive", "hung_on_stop", "requests", "seconds", "signals"]
STOP_TIMEOUT_S = 15  # a clean Triton stop takes 1-3 s here


async def _drive(url: str, mode: str, served: ServedModel, rounds: int, concurrency: int,
                 server: TritonServer, rng: random.Random) -> int:
    client = grpcclient.InferenceServerClient(url)
    catalog, sequence_length = served.catalog, served.sequence_length
    ids = [item.item_id for item in catalog.items]
    sent = 0

    async def one() -> None:
        inputs = build_inputs(rng.sample(ids, 20), catalog, sequence_length, 10,
                              exclude=rng.sample(ids, 20))
        give_up_s = rng.uniform(0.0005, 0.004)
        call = client.infer(sig.RECOMMEND_FUSED, inputs.infer_inputs(grpcclient),
                            client_timeout=give_up_s if mode == "client_deadline" else 30)
        try:
            if mode == "left_to_finish":
                await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(call)), give_up_s)
            elif mode == "caller_cancels":
                await asyncio.wait_for(call, give_up_s)
            else:
                await call
        except Exception:  # noqa: BLE001 - every way a call can be given up is expected here
            pass

    for _ in range(rounds):
        if not server.running:
            break
        await asyncio.gather(*(one() for _ in range(concurrency)))
        sent += concurrency
    await asyncio.sleep(2)  # let shielded calls finish (and a crash show) before closing
    await client.close()
    return sent


def run_once(repository: Path, served: ServedModel, mode: str, repeat: int, args: argparse.Namespace,
             log_dir: Path) -> dict:
    log_path = log_dir / f"triton-{mode}-{repeat}.log"
    started = time.perf_counter()
    server = TritonServer(repository, log_path=log_path).start()
    try:
        sent = asyncio.run(_drive(server.grpc_url, mode, served, args.rounds, args.concurrency, server,
                                  random.Random(args.seed + repeat)))
        alive = server.running
    finally:
        stopping = time.perf_counter()
        server.stop(STOP_TIMEOUT_S)
        stop_s = time.perf_counter() - stopping
    signals = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
               if line.startswith("Signal (") or "ASSERTION FAILED" in line]
    # The SIGINT of a normal stop is not a crash.
    signals = [s for s in signals if s != "Signal (2) received."]
    # A server that cannot shut down (it had to be SIGKILLed) is as lost as one that crashed.
    hung = alive and stop_s >= STOP_TIMEOUT_S
    return {"mode": mode, "repeat": repeat, "alive": alive, "hung_on_stop": hung,
            "survived": alive and not hung and not signals, "requests": sent,
            "seconds": round(time.perf_counter() - started, 1), "signals": "; ".join(signals)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results/cancellation"))
    p.add_argument("--repository", type=Path, help="an exported repository (default: export a fresh one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cancellation-") as work:
        repository = args.repository or export_fresh(Path(work), 1, args.out / "export.log")[0]
        served = load_served_model(repository)  # what the gateway reads: catalog, sequence length
        runs = []
        for repeat in range(args.repeats):
            for mode in MODES:  # side by side in each repeat: the machine's load hits all modes
                runs.append(run_once(repository, served, mode, repeat, args, args.out / "logs"))
                run = runs[-1]
                state = ("survived" if run["survived"] else "CRASHED" if not run["alive"]
                         else "HUNG on stop" if run["hung_on_stop"] else "lost")
                print(f"{mode:>16} #{repeat}: {state} after {run['requests']} requests "
                      f"{run['signals']}", flush=True)
    summary = {mode: f"{sum(r['survived'] for r in runs if r['mode'] == mode)}/{args.repeats} survived"
               for mode in MODES}
    print(json.dumps(summary))
    write_json(args.out / "cancellation.json",
               {"config": vars(args) | {"repository": str(args.repository)}, "summary": summary,
                "runs": runs, "environment": environment()})
    write_csv(args.out / "cancellation.csv", CSV_COLUMNS, runs)
    problems = [f"left_to_finish lost the server in repeat {r['repeat']}: {r}"
                for r in runs if r["mode"] == "left_to_finish" and not r["survived"]]
    return finish(f"{args.out / 'cancellation.json'}, .csv", problems, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
