"""perf/device/: the bundle's layout, the plan's time budget, the $OUT rules and the target checks
(no Triton, no torch model, no GPU)."""

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from perf.device import measure, report, server
from perf.device import plan as P
from perf.device.pack import Member, server_members, stage


def fake_wheel(root, stubs=("3.11", "3.12")):
    """The nvidia-pytriton wheel's files that server_members picks from, empty."""
    wheel = root / "pytriton"
    server_dir = wheel / "tritonserver"
    for rel in ["bin/tritonserver", "caches/local/libtritoncache_local.so",
                "backends/python/libtriton_python.so",
                "backends/python/triton_python_backend_utils.py",
                "backends/python/__pycache__/x.pyc"]:
        (server_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (server_dir / rel).write_text(rel)
    for v in stubs:
        stub = server_dir / "python_backend_stubs" / v / "triton_python_backend_stub"
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(v)
    libs = root / "nvidia_pytriton.libs"
    libs.mkdir()
    for name in ["libb64-98cb6333.so.0d", "libcudart-09529672.so.12.6.77", "libssl-57118d4e.so.3",
                 "libcrypto-b24afd48.so.3", "libpython3-419a3a08.13.so.1.0", "libtritonserver-1.so"]:
        (libs / name).write_text(name)
    pa = root / "perf_analyzer"
    pa.write_text("pa")
    return wheel, pa


def test_server_members_keep_the_wheel_layout_one_stub_and_no_libpython(tmp_path):
    wheel, pa = fake_wheel(tmp_path)
    members = server_members(wheel, pa, "3.12")
    names = {m.arcname for m in members}
    assert "triton/pytriton/tritonserver/bin/tritonserver" in names
    assert "triton/pytriton/tritonserver/caches/local/libtritoncache_local.so" in names
    assert "triton/nvidia_pytriton.libs/libtritonserver-1.so" in names
    assert "triton/bin/perf_analyzer" in names
    assert not any("libpython" in n or "__pycache__" in n or "python_backend_stubs" in n for n in names)
    stub = next(m for m in members if m.arcname.endswith("triton_python_backend_stub"))
    assert stub.arcname == "triton/pytriton/tritonserver/backends/python/triton_python_backend_stub"
    assert stub.source.read_text() == "3.12"
    links = {m.arcname: m.link for m in members if m.link}
    assert links == {
        "triton/lib/libb64.so.0d": "../nvidia_pytriton.libs/libb64-98cb6333.so.0d",
        "triton/lib/libcudart.so.12": "../nvidia_pytriton.libs/libcudart-09529672.so.12.6.77",
        "triton/fallback/libssl.so.3": "../nvidia_pytriton.libs/libssl-57118d4e.so.3",
        "triton/fallback/libcrypto.so.3": "../nvidia_pytriton.libs/libcrypto-b24afd48.so.3",
    }


def test_staged_links_resolve_inside_the_bundle(tmp_path):
    wheel, pa = fake_wheel(tmp_path / "wheel")
    stage(server_members(wheel, pa, "3.12"), tmp_path / "stage")
    for link in ("lib/libb64.so.0d", "lib/libcudart.so.12", "fallback/libssl.so.3"):
        path = tmp_path / "stage" / "triton" / link
        assert path.is_symlink() and path.resolve().is_file()


def test_a_missing_stub_is_an_error_naming_the_version(tmp_path):
    wheel, pa = fake_wheel(tmp_path, stubs=("3.11",))
    with pytest.raises(FileNotFoundError, match="3.12"):
        server_members(wheel, pa, "3.12")


def test_unpack_checks_checksums_and_extracts(tmp_path):
    bundle, work = tmp_path / "bundle", tmp_path / "work"
    bundle.mkdir()
    stage([Member("triton/bin/x", link="y")], tmp_path / "s")
    tar_path = bundle / P.SERVER_TAR
    with tarfile.open(tar_path, "w:xz") as tar:
        tar.add(tmp_path / "s", arcname=".")
    (bundle / P.MANIFEST).write_text(json.dumps(
        {"files": {P.SERVER_TAR: {"sha256": server.sha256(tar_path)}}, "kind": "KIND_CPU"}))
    assert server.unpack(bundle, work)["kind"] == "KIND_CPU"
    assert (work / "triton" / "bin" / "x").is_symlink()
    (bundle / P.MANIFEST).write_text(json.dumps({"files": {P.SERVER_TAR: {"sha256": "0"}}}))
    with pytest.raises(RuntimeError, match="checksum"):
        server.unpack(bundle, work)


@pytest.mark.parametrize("mode", ["device", "dry"])
def test_the_plan_fits_its_budget_and_the_budget_fits_one_call(mode):
    plan = P.make_plan(mode)
    assert plan.worst_s() <= plan.budget_s
    assert plan.budget_s <= 8 * 60 < P.COMMAND_LIMIT_S
    fused = [s for s in plan.sweeps if s.model in (P.FUSED, P.FUSED_NOBATCH)]
    assert {s.batching for s in fused} == {True, False}
    assert all(s.concurrency == (1, 2, 4, 8, 16, 32, 64, 128) and 64 in s.required for s in fused)
    assert plan.train_batches == (256, 4096)


def test_the_device_plan_measures_the_issues_catalogs_and_the_dry_one_small_ones():
    device, dry = P.make_plan("device"), P.make_plan("dry")
    assert device.kind == "KIND_GPU" and dry.kind == "KIND_CPU"
    assert device.synthetic_items == (1_000_000, 10_000_000)
    assert max(dry.synthetic_items) <= 100_000
    assert {P.retrieve_name(n) for n in device.synthetic_items} == {"retrieve_1m", "retrieve_10m"}
    retrieve = [s for s in device.sweeps if s.items]
    assert retrieve[0].items == 10_000_000 and all(1 in s.concurrency for s in retrieve)
    with pytest.raises(ValueError):
        P.make_plan("gpu")


def test_output_files_obey_the_device_tools_rules():
    P.check_out_files(P.OUTPUT_FILES)
    assert len(P.OUTPUT_FILES) <= P.OUT_MAX_FILES
    assert P.check_out_name("a/b/file.csv") == "a/b/file.csv"
    for bad in ("a/b/c/file", "../x", "/abs", "sp ace.txt", "é.json"):
        with pytest.raises(ValueError):
            P.check_out_name(bad)
    with pytest.raises(ValueError):
        P.check_out_files([f"f{i}" for i in range(P.OUT_MAX_FILES + 1)])


def test_items_labels():
    assert [P.items_label(n) for n in (10_000, 50_000, 1_000_000, 10_000_000, 1234)] == \
        ["10k", "50k", "1m", "10m", "1234"]


CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
       "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,"
       "p90 latency,p95 latency,p99 latency\n4,2000.5,3,205,10,24,830,205,1,1178,1412,1616,4272\n")


def test_perf_analyzer_csv_row_in_ms():
    row = measure.parse_csv(CSV, 4)
    assert row["throughput"] == 2000.5 and row["p99_ms"] == 4.272 and row["compute_us"] == 1059
    with pytest.raises(measure.PerfError):
        measure.parse_csv(CSV, 8)
    assert measure.rows_read("Successfully read data for 1 stream/streams with 500 step/steps.") == 500


def rows(c1_p99=0.8, on64=30_000.0, off64=9_000.0, retrieve_items=10_000_000, retrieve_p99=4.0):
    return [
        {"step": "fused_batching", "concurrency": 1, "throughput": 1500.0, "p50_ms": .5, "p99_ms": c1_p99},
        {"step": "fused_batching", "concurrency": 64, "throughput": on64, "p50_ms": 2, "p99_ms": 3,
         "mean_batch": 20.0},
        {"step": "fused_no_batching", "concurrency": 64, "throughput": off64, "p50_ms": 6, "p99_ms": 9,
         "mean_batch": 1.0},
        {"step": "retrieve_10m", "concurrency": 1, "items": retrieve_items, "throughput": 300.0,
         "p50_ms": 3.0, "p99_ms": retrieve_p99},
    ]


def test_targets_met_and_not_met():
    t = report.targets(rows(), "device")
    assert t["label"] == "GPU run"
    assert [t[k]["verdict"] for k in ("fused_p99_c1", "batching_c64", "retrieve_p99_c1")] == ["met"] * 3
    assert t["batching_c64"]["ratio"] == 3.33
    t = report.targets(rows(c1_p99=1.2, off64=12_000.0, retrieve_p99=6.0), "device")
    assert [t[k]["verdict"] for k in ("fused_p99_c1", "batching_c64", "retrieve_p99_c1")] == ["not met"] * 3


def test_targets_of_a_dry_run_are_labelled_and_missing_rows_are_not_measured():
    t = report.targets(rows(retrieve_items=50_000), "dry")
    assert "not GPU" in t["label"]
    assert t["retrieve_p99_c1"]["verdict"].startswith("met at 50000 items")
    empty = report.targets([], "device")
    assert {empty[k]["verdict"] for k in ("fused_p99_c1", "batching_c64", "retrieve_p99_c1")} == \
        {"not measured"}


def test_targets_read_back_from_the_written_csv(tmp_path):
    """run.py writes results.csv with plan.CSV_COLUMNS; report.py reads it back as strings."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=P.CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows())
    (tmp_path / P.OUT_CSV).write_text(buf.getvalue())
    t = report.targets(report.read_rows(tmp_path / P.OUT_CSV), "device")
    assert t["retrieve_p99_c1"]["verdict"] == "met" and t["batching_c64"]["verdict"] == "met"


def test_library_env_puts_the_bundle_first_and_this_python_first_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/already")
    env = server.library_env(tmp_path / "triton")
    dirs = env["LD_LIBRARY_PATH"].split(":")
    assert dirs[:2] == [str(tmp_path / "triton" / "lib"), str(tmp_path / "triton" / "nvidia_pytriton.libs")]
    assert dirs[-1] == "/already"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_find_library_searches_the_given_folders_in_order(tmp_path):
    for folder in ("a/lib", "b/lib"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "b/lib/libpython3.12.so.1.0").write_text("")
    assert server.find_library("libpython3.12.so.1.0", (str(tmp_path / "*/lib"),)) == tmp_path / "b/lib"
    assert server.find_library("libpython3.99.so", (str(tmp_path / "*/lib"),)) is None
