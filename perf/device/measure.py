"""One perf_analyzer run (gRPC, one concurrency) and what it reports. Standard library only."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

from perf.device import plan as P

_COLUMNS = {"concurrency": "Concurrency", "throughput": "Inferences/Second",
            "queue_us": "Server Queue", "p50": "p50 latency", "p90": "p90 latency",
            "p95": "p95 latency", "p99": "p99 latency"}
_COMPUTE = ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
UNSTABLE = "Failed to obtain stable measurement"


class PerfError(RuntimeError):
    """A perf_analyzer run that gave no usable row."""


def parse_csv(text: str, concurrency: int) -> dict:
    """The row of ``concurrency`` from perf_analyzer's ``-f`` CSV, latencies in ms."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in (*_COLUMNS.values(), *_COMPUTE) if c not in (reader.fieldnames or [])]
    if missing:
        raise PerfError(f"perf_analyzer CSV lacks columns {missing}")
    for raw in reader:
        if raw.get("Concurrency") and int(float(raw["Concurrency"])) == concurrency:
            row = {key: float(raw[col]) for key, col in _COLUMNS.items()}
            out = {"concurrency": concurrency, "throughput": row["throughput"],
                   "queue_us": row["queue_us"],
                   "compute_us": sum(float(raw[c]) for c in _COMPUTE)}
            for p in ("p50", "p90", "p95", "p99"):
                out[f"{p}_ms"] = round(row[p] / 1000, 4)
            if out["throughput"] <= 0 or out["p99_ms"] <= 0:
                raise PerfError(f"no throughput or p99 in the row: {raw}")
            return out
    raise PerfError(f"no row for concurrency {concurrency}")


def rows_read(output: str) -> int | None:
    m = re.search(r"Successfully read data for \d+ stream/streams with (\d+) step/steps", output)
    return int(m.group(1)) if m else None


def argv(binary: Path, model: str, grpc_url: str, input_json: Path, concurrency: int,
         csv_path: Path) -> list[str]:
    return [str(binary), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(input_json),
            # EXCLUDE is [-1] in the config: perf_analyzer wants a shape even though every JSON
            # row carries its own.
            "--shape", f"EXCLUDE:{P.EXCLUDE_WIDTH}", "--concurrency-range", str(concurrency),
            "-f", str(csv_path)]


def run(binary: Path, env: dict, model: str, grpc_url: str, input_json: Path, expected_rows: int,
        concurrency: int, window: P.Window, raw_dir: Path, tag: str, retry: bool) -> dict:
    """perf_analyzer at one concurrency; an unstable measurement is retried once at twice the
    tolerance when ``retry``. Raises PerfError (the log's tail in the message)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    csv_path = raw_dir / f"{tag}_c{concurrency}.csv"
    log_path = csv_path.with_suffix(".log")
    base = argv(binary, model, grpc_url, input_json, concurrency, csv_path)
    attempts = [window.stability_pct] + ([2 * window.stability_pct] if retry else [])
    text, stability = "", window.stability_pct
    for stability in attempts:
        csv_path.unlink(missing_ok=True)
        cmd = base + window.argv(stability)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=window.worst_s() + 30)
        except subprocess.TimeoutExpired as e:
            text = f"{' '.join(cmd)}\n\ntimed out after {e.timeout:.0f} s\n"
            log_path.write_text(text)
            raise PerfError(f"{tag} c={concurrency}: perf_analyzer timed out") from None
        text = " ".join(cmd) + "\n\n" + proc.stdout + proc.stderr
        log_path.write_text(text)
        if UNSTABLE not in text:
            break
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise PerfError(f"{tag} c={concurrency}: perf_analyzer exited {proc.returncode}: {tail}")
    read = rows_read(proc.stdout)
    if read != expected_rows:
        raise PerfError(f"{tag} c={concurrency}: read {read} input rows, expected {expected_rows}")
    if not csv_path.is_file():
        raise PerfError(f"{tag} c={concurrency}: no CSV written")
    row = parse_csv(csv_path.read_text(), concurrency)
    requests = re.search(r"Request count: (\d+)", proc.stdout)
    return {**row, "requests": int(requests.group(1)) if requests else None,
            "stability_pct": stability}
