"""Write the Triton model repository: TorchScript files, python-backend code and config.pbtxt.

``config.pbtxt`` is generated from protobuf messages (tritonclient's ``model_config_pb2``), never
from string templates, so every file is a valid ModelConfig by construction and parses back.

Layout written under ``root``::

    user_tower/config.pbtxt  user_tower/<v>/{model.pt, model.py}
    retrieve/config.pbtxt    retrieve/<v>/{model.pt, model.py, catalog.json, serving.json}
    recommend/config.pbtxt   recommend/<v>/          (ensemble: user_tower -> retrieve)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import signature as sig
from export.retrieval import TopKRetrieval
from export.towers import TwoTower
from features.catalog import ItemCatalog

MODEL_CODE = Path(__file__).parent / "triton_models"


@dataclass(frozen=True)
class ServingConfig:
    """Knobs of the generated configs that are not learned."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 200
    instances: int = 1


def _tensor(cls, name: str, dtype: str, dims: list[int]):
    return cls(name=name, data_type=mc.DataType.Value(dtype), dims=dims)


def _python_model(name: str, inputs, outputs, serving: ServingConfig) -> mc.ModelConfig:
    return mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=serving.max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in inputs],
        output=[_tensor(mc.ModelOutput, *t) for t in outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            max_queue_delay_microseconds=serving.max_queue_delay_us
        ),
        instance_group=[
            mc.ModelInstanceGroup(count=serving.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        ],
        # Serve only the newest version; older ones stay on disk for roll-back.
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )


def model_configs(sequence_length: int, dim: int, serving: ServingConfig) -> dict[str, mc.ModelConfig]:
    """The three configs, from one description of the tensors."""
    history = (sig.HISTORY, "TYPE_INT64", [sequence_length])
    user_embedding = (sig.USER_EMBEDDING, "TYPE_FP32", [dim])
    exclude = (sig.EXCLUDE, "TYPE_INT64", [-1])
    k = (sig.K, "TYPE_INT32", [1])
    item_index = (sig.ITEM_INDEX, "TYPE_INT64", [-1])
    score = (sig.SCORE, "TYPE_FP32", [-1])

    user_tower = _python_model(sig.USER_TOWER, [history], [user_embedding], serving)
    retrieve = _python_model(sig.RETRIEVE, [user_embedding, exclude, k], [item_index, score], serving)

    def step(model: str, inputs: list[str], outputs: list[str]):
        return mc.ModelEnsembling.Step(
            model_name=model,
            model_version=-1,
            input_map={n: n for n in inputs},
            output_map={n: n for n in outputs},
        )

    recommend = mc.ModelConfig(
        name=sig.RECOMMEND,
        platform="ensemble",
        max_batch_size=serving.max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in (history, exclude, k)],
        output=[_tensor(mc.ModelOutput, *t) for t in (item_index, score)],
        ensemble_scheduling=mc.ModelEnsembling(step=[
            step(sig.USER_TOWER, [sig.HISTORY], [sig.USER_EMBEDDING]),
            step(sig.RETRIEVE, [sig.USER_EMBEDDING, sig.EXCLUDE, sig.K], [sig.ITEM_INDEX, sig.SCORE]),
        ]),
    )
    return {sig.USER_TOWER: user_tower, sig.RETRIEVE: retrieve, sig.RECOMMEND: recommend}


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text_format.MessageToString(config))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def export_repository(
    model: TwoTower,
    catalog: ItemCatalog,
    root: Path,
    *,
    sequence_length: int,
    version: int = 1,
    serving: ServingConfig = ServingConfig(),
    metadata: dict | None = None,
) -> Path:
    """TorchScript the towers and write a complete, loadable repository under ``root``.

    Re-exporting the same version replaces it; other versions are left alone.
    """
    model = model.eval()
    with torch.no_grad():
        item_embeddings = model.item_embeddings()
    dim = int(item_embeddings.shape[1])
    scripted = {
        sig.USER_TOWER: (torch.jit.script(model.user_tower), "torchscript.py"),
        sig.RETRIEVE: (torch.jit.script(TopKRetrieval(item_embeddings)), "retrieve.py"),
    }
    for name, config in model_configs(sequence_length, dim, serving).items():
        model_dir = root / name
        write_config(config, model_dir)
        version_dir = model_dir / str(version)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        version_dir.mkdir(parents=True)
        if name in scripted:
            module, code = scripted[name]
            module.save(str(version_dir / "model.pt"))
            shutil.copyfile(MODEL_CODE / code, version_dir / "model.py")
    retrieve_dir = root / sig.RETRIEVE / str(version)
    catalog.to_json(retrieve_dir / sig.CATALOG_FILE)
    serving_info = {"version": version, "sequence_length": sequence_length, "dim": dim,
                    **(metadata or {})}
    (retrieve_dir / sig.SERVING_FILE).write_text(json.dumps(serving_info, indent=2))
    return root
