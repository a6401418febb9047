from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import signature as sig
from export.repository import ServingConfig, model_configs, read_config, write_config


def test_every_config_parses_back_identically(tmp_path):
    configs = model_configs(sequence_length=7, dim=16, serving=ServingConfig())
    assert set(configs) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND}
    for name, config in configs.items():
        path = write_config(config, tmp_path / name)
        assert read_config(path) == config
        assert text_format.Parse(path.read_text(), mc.ModelConfig()).name == name


def test_python_models_batch_dynamically_and_serve_the_latest_version():
    serving = ServingConfig(max_batch_size=32, max_queue_delay_us=150, instances=2)
    for name in (sig.USER_TOWER, sig.RETRIEVE):
        config = model_configs(7, 16, serving)[name]
        assert config.backend == "python" and config.max_batch_size == 32
        assert config.dynamic_batching.max_queue_delay_microseconds == 150
        assert config.instance_group[0].count == 2
        assert config.version_policy.latest.num_versions == 1


def test_ensemble_wiring_matches_the_composing_models():
    configs = model_configs(7, 16, ServingConfig())
    ensemble = configs[sig.RECOMMEND]
    assert ensemble.platform == "ensemble"
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {t.name for t in model.output}
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    history = next(t for t in ensemble.input if t.name == sig.HISTORY)
    assert list(history.dims) == [7]
