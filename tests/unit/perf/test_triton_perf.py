"""perf/triton_perf.py: the repository variants it serves (no Triton needed)."""

import os

from export.triton.repository import ServingConfig, model_configs, read_config, write_config
from features import contract as sig
from perf.triton_perf import env_vars, rewrite_python_models


def test_rewrite_python_models_switches_batching_but_leaves_the_ensemble(tmp_path):
    for name, config in model_configs(5, 8, ServingConfig()).items():
        write_config(config, tmp_path / name)
    ensemble = (tmp_path / sig.RECOMMEND / "config.pbtxt").read_text()

    rewrite_python_models(tmp_path, dynamic_batching=False)
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = read_config(tmp_path / name / "config.pbtxt")
        assert not config.HasField("dynamic_batching") and config.max_batch_size == 64

    rewrite_python_models(tmp_path, dynamic_batching=True, max_queue_delay_us=0, instances=2)
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = read_config(tmp_path / name / "config.pbtxt")
        assert config.HasField("dynamic_batching")
        assert config.dynamic_batching.max_queue_delay_microseconds == 0
        assert config.instance_group[0].count == 2
    assert (tmp_path / sig.RECOMMEND / "config.pbtxt").read_text() == ensemble


def test_env_vars_are_set_inside_and_restored_after(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with env_vars(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "4" and "MKL_NUM_THREADS" not in os.environ
    with env_vars(OMP_NUM_THREADS=None):  # None leaves the variable as it is
        assert os.environ["OMP_NUM_THREADS"] == "4"
