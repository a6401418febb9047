"""Build what the GPU machine needs and does not have: the Triton server, perf_analyzer, the model
repository to measure and the training examples, compressed into ``.device_bundle/`` (ignored by
git, carried to the device with the tracked tree).

    .venv/bin/python perf/device/pack.py          # for the device: KIND_GPU, Python 3.12 stub
    .venv/bin/python perf/device/pack.py --dry    # for perf/device/run.sh --dry here: KIND_CPU,
                                                  # this interpreter's stub, into perf/results/

Bundle: ``server.tar.xz`` (tritonserver and its libraries from the nvidia-pytriton wheel, the
python backend with one stub, perf_analyzer), ``data.tar.xz`` (the repository: ML-100K
``recommend_fused`` with and without dynamic batching, the synthetic ``retrieve_*`` models without
their ``model.pt`` — run.py writes those on the device —, perf_analyzer input JSON from 500 real
users, training examples) and ``manifest.json`` (sizes, checksums, what it was built for).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from perf.device import plan as P  # noqa: E402
from perf.device.server import sha256  # noqa: E402

DEVICE_STUB_PYTHON = "3.12"  # /opt/torch/.venv/bin/python3 on the GPU machine


@dataclass(frozen=True)
class Member:
    """One entry of the server tarball: a copied file (``source``) or a relative symlink."""

    arcname: str
    source: Path | None = None
    link: str | None = None


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def server_members(wheel: Path, perf_analyzer: Path, stub_python: str) -> list[Member]:
    """The server tarball's entries, under ``triton/``, laid out as the wheel lays them out
    (``pytriton/tritonserver/`` next to ``nvidia_pytriton.libs/``) so the binaries' RPATHs
    ($ORIGIN/../../../nvidia_pytriton.libs) still hold.

    ``wheel`` is the installed ``pytriton`` package folder. Left out: every other python-backend
    stub, and the wheel's libpython (a 3.13 one: the stub links the machine's own libpython).
    ``lib/`` gets the two sonames perf_analyzer and the stub ask for by their plain names;
    ``fallback/`` the OpenSSL sonames, put on the library path only if the machine lacks them.
    """
    server = wheel / "tritonserver"
    libs = wheel.parent / "nvidia_pytriton.libs"
    stub = server / "python_backend_stubs" / stub_python / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"no python-backend stub for Python {stub_python}: {stub}")
    out = [Member("triton/pytriton/tritonserver/bin/tritonserver", server / "bin" / "tritonserver")]
    for path in sorted((server / "caches").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            out.append(Member(f"triton/pytriton/tritonserver/{path.relative_to(server)}", path))
    backend = server / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        out.append(Member(f"triton/pytriton/tritonserver/backends/python/{name}", backend / name))
    out.append(Member("triton/pytriton/tritonserver/backends/python/triton_python_backend_stub", stub))
    for path in sorted(libs.iterdir()):
        if path.is_file() and not path.name.startswith("libpython3"):
            out.append(Member(f"triton/nvidia_pytriton.libs/{path.name}", path))
    out.append(Member("triton/bin/perf_analyzer", perf_analyzer))
    for soname, pattern, folder in (("libb64.so.0d", "libb64-*.so.0d", "lib"),
                                    ("libcudart.so.12", "libcudart-*.so.12*", "lib"),
                                    ("libssl.so.3", "libssl-*.so.3", "fallback"),
                                    ("libcrypto.so.3", "libcrypto-*.so.3", "fallback")):
        out.append(Member(f"triton/{folder}/{soname}",
                          link=f"../nvidia_pytriton.libs/{_one(libs, pattern).name}"))
    return out


def stage(members: list[Member], root: Path) -> None:
    for m in members:
        dest = root / m.arcname
        dest.parent.mkdir(parents=True, exist_ok=True)
        if m.link is not None:
            dest.symlink_to(m.link)
        else:
            shutil.copy2(m.source, dest)


def tar_xz(source_dir: Path, dest: Path, preset: str) -> None:
    """``tar -cJ`` of everything in ``source_dir`` (symlinks kept), multi-threaded xz."""
    env = {**os.environ, "XZ_OPT": f"-{preset} -T0"}
    subprocess.run(["tar", "-C", str(source_dir), "-cJf", str(dest), "."], check=True, env=env)


def tree_bytes(repo: Path = REPO_ROOT) -> int:
    """What the device tool carries besides named ignored folders: tracked files and untracked
    files git does not ignore."""
    total = 0
    for args in (["ls-files", "-z"], ["ls-files", "-z", "-o", "--exclude-standard"]):
        names = subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout
        for name in filter(None, names.split(b"\0")):
            path = repo / os.fsdecode(name)
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total


# --- the data: repository, inputs, training examples ---------------------------------------------


def export_ml100k(work: Path, kind: str, epochs: int, reuse: bool) -> tuple[Path, object]:
    """Train briefly on ML-100K and export the full repository for ``kind`` instances into
    ``work`` (kept: ``reuse`` takes the one already there). Returns (repository, dataset)."""
    from export.pipeline import SNAPSHOT_FILE, load_dataset, run
    from export.train import TrainConfig
    from export.triton.repository import ServingConfig

    repo, artifacts = work / "full_repository", work / "artifacts"
    if reuse and (artifacts / SNAPSHOT_FILE).is_file() and (repo / "recommend_fused").is_dir():
        print(f"reusing the export in {work}", flush=True)
        return repo, load_dataset("ml-100k")
    shutil.rmtree(work, ignore_errors=True)
    result = run("ml-100k", repo, artifacts, TrainConfig(epochs=epochs), seeds=(0,),
                 baselines=False, serving=ServingConfig(instance_kind=kind))
    return repo, result.dataset


def write_data(staging: Path, plan: P.Plan, full_repo: Path, artifacts: Path, dataset,
               users: int = 500) -> dict:
    import numpy as np

    from export.data.examples import build_examples
    from export.data.split import leave_last_out
    from export.train import TrainConfig
    from export.triton.repository import (
        MODEL_CODE,
        WARMUP_K_FILE,
        ServingConfig,
        model_config,
        model_specs,
        read_config,
        write_config,
    )
    from features import contract as sig
    from perf.input_data import snapshot_steps, write_input_files

    repo = staging / "repository"
    shutil.copytree(full_repo / sig.RECOMMEND_FUSED, repo / P.FUSED)
    nobatch = read_config(repo / P.FUSED / "config.pbtxt")
    nobatch.name = P.FUSED_NOBATCH
    nobatch.ClearField("dynamic_batching")
    shutil.copytree(repo / P.FUSED, repo / P.FUSED_NOBATCH)
    write_config(nobatch, repo / P.FUSED_NOBATCH)

    serving = json.loads((full_repo / sig.RETRIEVE / "1" / sig.SERVING_FILE).read_text())
    length = int(serving["sequence_length"])
    spec = model_specs(length, P.DIM)[sig.RETRIEVE]
    for items in plan.synthetic_items:
        name = P.retrieve_name(items)
        config = model_config(spec, "python", ServingConfig(instance_kind=plan.kind))
        config.name = name
        write_config(config, repo / name)
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(MODEL_CODE / spec.code, repo / name / "1" / "model.py")
        (repo / name / "warmup").mkdir()
        np.array([10], dtype="<i4").tofile(repo / name / "warmup" / WARMUP_K_FILE)

    from export.pipeline import SNAPSHOT_FILE

    snapshot = json.loads((artifacts / SNAPSHOT_FILE).read_text())
    paths = write_input_files(full_repo, snapshot_steps(snapshot), staging / "tmp_inputs", users=users)
    (staging / "inputs").mkdir()
    shutil.copyfile(paths[sig.RECOMMEND_FUSED], staging / "inputs" / f"{P.FUSED}.json")
    shutil.rmtree(staging / "tmp_inputs")

    train_dir = staging / "train"
    train_dir.mkdir()
    catalog = dataset.catalog
    histories, targets = build_examples(leave_last_out(dataset).train, catalog, length)
    dtype = np.min_scalar_type(max(int(histories.max()), int(targets.max())))
    np.savez_compressed(train_dir / "examples.npz", histories=histories.astype(dtype),
                        targets=targets.astype(dtype))
    shutil.copyfile(full_repo / sig.RETRIEVE / "1" / sig.CATALOG_FILE, train_dir / "catalog.json")
    defaults = TrainConfig()
    info = {"examples": int(len(targets)), "sequence_length": length, "dim": defaults.dim,
            "items": catalog.num_items, "input_rows": users, "dataset": serving.get("dataset")}
    (train_dir / "info.json").write_text(json.dumps(info, indent=2))
    return info


# --- the whole bundle ---------------------------------------------------------------------------


def pack(out: Path, plan: P.Plan, stub_python: str, preset: str, epochs: int,
         check_carry: bool, reuse_export: bool = False) -> dict:
    from stack.triton import _pytriton_dir

    started = time.perf_counter()
    wheel = _pytriton_dir()
    perf_analyzer = Path(sys.executable).parent / "perf_analyzer"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="device-pack-") as tmp:
        tmp = Path(tmp)
        server_stage = tmp / "server"
        stage(server_members(wheel, perf_analyzer, stub_python), server_stage)
        tar_xz(server_stage, out / P.SERVER_TAR, preset)
        print(f"server: {(out / P.SERVER_TAR).stat().st_size / 2**20:.1f} MiB "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

        export_dir = REPO_ROOT / "perf" / "results" / "device_export" / plan.kind
        full_repo, dataset = export_ml100k(export_dir, plan.kind, epochs, reuse_export)
        data_stage = tmp / "data"
        data_stage.mkdir()
        info = write_data(data_stage, plan, full_repo, export_dir / "artifacts", dataset)
        tar_xz(data_stage, out / P.DATA_TAR, preset)

    files = {name: {"bytes": (out / name).stat().st_size, "sha256": sha256(out / name)}
             for name in (P.SERVER_TAR, P.DATA_TAR)}
    bundle = sum(f["bytes"] for f in files.values())
    tree = tree_bytes()
    manifest = {
        "mode": plan.mode, "kind": plan.kind, "stub_python": stub_python,
        "synthetic_items": list(plan.synthetic_items), "epochs": epochs, "train": info,
        "files": files, "bundle_bytes": bundle, "tree_bytes": tree, "carry_bytes": bundle + tree,
        "carry_limit_bytes": P.CARRY_LIMIT_BYTES, "git_commit": _git_head(),
        "tree_dirty": _tree_dirty(),
        "packed_s": round(time.perf_counter() - started, 1),
    }
    (out / P.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if check_carry and bundle + tree > P.CARRY_LIMIT_BYTES:
        raise SystemExit(f"bundle {bundle} + tree {tree} bytes exceed the {P.CARRY_LIMIT_BYTES} "
                         "bytes the device tool carries")
    return manifest


def _git_head() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def _tree_dirty() -> bool | None:
    """Uncommitted changes when packing: the bundle's model code may then be no commit's."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true",
                        help="a bundle for the CPU dry run here (KIND_CPU, this Python's stub)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default {P.BUNDLE_DIR} (device) or {P.DRY_DIR}/bundle (dry)")
    parser.add_argument("--epochs", type=int, default=None, help="ML-100K epochs (2, dry: 1)")
    parser.add_argument("--xz", default=None, help="xz preset (device 9, dry 1)")
    parser.add_argument("--reuse-export", action="store_true",
                        help="take the ML-100K export of an earlier pack (perf/results/device_export/)")
    args = parser.parse_args(argv)
    plan = P.make_plan("dry" if args.dry else "device")
    out = args.out or REPO_ROOT / (f"{P.DRY_DIR}/bundle" if args.dry else P.BUNDLE_DIR)
    stub = f"{sys.version_info.major}.{sys.version_info.minor}" if args.dry else DEVICE_STUB_PYTHON
    manifest = pack(out, plan, stub, args.xz or ("1" if args.dry else "9"),
                    args.epochs or (1 if args.dry else 2), check_carry=not args.dry,
                    reuse_export=args.reuse_export)
    mib = 2**20
    parts = ", ".join(f"{n} {f['bytes'] / mib:.1f} MiB" for n, f in manifest["files"].items())
    print(f"bundle {out}: {manifest['bundle_bytes'] / mib:.1f} MiB ({parts}); "
          f"with the tree {manifest['carry_bytes'] / mib:.1f} of {P.CARRY_LIMIT_BYTES / mib:.0f} MiB; "
          f"{manifest['packed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
