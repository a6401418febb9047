import json

from perf import bench_user_tower


def test_both_forms_answer_alike_and_every_measurement_is_written(tmp_path, torch_threads):
    forms, difference = bench_user_tower.fused_forms(members=2, items=30)
    assert set(forms) == set(bench_user_tower.FORMS)
    assert difference < 1e-5
    assert bench_user_tower.main(["--members", "1", "2", "--batch", "1", "3", "--rounds", "2",
                                  "--calls", "3", "--items", "30", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "user_tower.json").read_text())
    assert len(result["rounds"]) == 2 * 2 * 2 * 2  # rounds x members x batches x forms
    assert all(r["ms"] > 0 for r in result["rounds"])
    assert {(s["members"], s["batch"], s["form"]) for s in result["summary"]} == {
        (m, b, f) for m in (1, 2) for b in (1, 3) for f in bench_user_tower.FORMS}
    assert (tmp_path / "user_tower.csv").read_text().count("\n") == 1 + 16
    assert (tmp_path / "user_tower.png").stat().st_size > 0
