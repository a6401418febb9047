import json

import torch

from perf import bench_item_matrix


def test_both_layouts_compute_one_product_and_every_measurement_is_written(tmp_path, torch_threads):
    queries, rows, columns = bench_item_matrix.operands(items=50, dim=8, batch=3)
    assert columns.shape == (8, 50) and columns.is_contiguous()
    by_layout = {name: f() for name, f in bench_item_matrix.products(queries, rows, columns).items()}
    assert set(by_layout) == set(bench_item_matrix.LAYOUTS)
    torch.testing.assert_close(by_layout["columns"], queries @ rows.T)
    assert bench_item_matrix.relative_difference(queries, rows, columns) < 1e-5
    assert bench_item_matrix.main(["--items", "40", "--dims", "4", "8", "--batch", "1", "--rounds", "2",
                                   "--calls", "3", "--flush-mb", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "item_matrix.json").read_text())
    assert len(result["rounds"]) == 2 * 2 * 2 * 2  # rounds x dims x caches x layouts
    assert all(r["us"] > 0 for r in result["rounds"])
    assert {(s["dim"], s["cache"], s["layout"]) for s in result["summary"]} == {
        (d, c, lay) for d in (4, 8) for c in bench_item_matrix.CACHES for lay in bench_item_matrix.LAYOUTS}
    assert (tmp_path / "item_matrix.csv").read_text().count("\n") == 1 + 16
    assert (tmp_path / "item_matrix.png").stat().st_size > 0
