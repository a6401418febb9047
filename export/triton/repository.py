"""Write the Triton model repository: TorchScript files, python-backend code and config.pbtxt.

``config.pbtxt`` is generated from protobuf messages (tritonclient's ``model_config_pb2``), never
from string templates, so every file is a valid ModelConfig by construction and parses back.
Two targets from the same ``model.pt`` files:

* ``python`` — python backend (the bundled CPU server): ``model.py`` next to ``model.pt``.
* ``libtorch`` — ``platform: "pytorch_libtorch"`` (the NGC container): tensors named
  ``INPUT__i`` / ``OUTPUT__i`` in ``forward`` order, the ensemble maps them to the contract names.

Every config records which contract tensor each of its tensors is (parameters ``contract_inputs``
and ``contract_outputs``, in config order, from ``model_specs``): clients read the mapping with
``features.contract.tensor_names``, so one client serves both targets.

Layout written under ``root``::

    user_tower/      config.pbtxt  <v>/model.pt [model.py]
    retrieve/        config.pbtxt  <v>/model.pt [model.py] catalog.json serving.json   warmup/
    recommend/       config.pbtxt  <v>/          (ensemble: user_tower -> retrieve)
    recommend_fused/ config.pbtxt  <v>/model.pt [model.py]                            warmup/
    similar_items/   config.pbtxt  <v>/model.pt [model.py]                            warmup/
                     (item-to-item over the same item matrix: ITEM, EXCLUDE, K)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from export.model.ann import RetrievalIndexConfig, build_index, choose_index
from export.model.ensemble import Towers
from export.model.retrieval import FusedRecommender, SimilarItems, TopKRetrieval
from export.model.stacked import served_user_tower
from export.triton.config_files import REFERENCE_FILE, read_config, write_config  # noqa: F401 (callers)
from features import contract as sig
from features.behaviour import STEP_TYPES, type_code
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

MODEL_CODE = Path(__file__).parent / "models"
Target = Literal["python", "libtorch"]
Kind = Literal["KIND_CPU", "KIND_GPU"]
WARMUP_EXCLUDE_WIDTH = 16
WARMUP_K_FILE = "k"
INDEX_FILE = "index.faiss"  # read by models/retrieve.py when present


@dataclass(frozen=True)
class ServingConfig:
    """Knobs of the generated configs that are not learned."""

    max_batch_size: int = 64
    dynamic_batching: bool = True
    # Tuned with perf/triton_perf.py --tune: any wait costs latency at low load, and requests
    # still batch while an instance is busy (see perf/README.md).
    max_queue_delay_us: int = 0
    instances: int = 1
    torch_threads: int = 1  # per python-backend instance (each is a process)
    instance_kind: Kind = "KIND_CPU"
    # Per model: (kind, count) instead of (instance_kind, instances), e.g.
    # {"user_tower": ("KIND_GPU", 1), "retrieve": ("KIND_GPU", 2)}. KIND_GPU: ``count`` instances
    # on every GPU Triton sees.
    instance_groups: Mapping[str, tuple[Kind, int]] = field(default_factory=dict, hash=False)
    warmup: bool = True
    # Tensor naming, when not the target's own: ``"libtorch"`` with the python target writes
    # python-backend models that name their tensors INPUT__i / OUTPUT__i, which the CPU server
    # can load (tests stand it in for the libtorch target, tests/integration/export/).
    naming: Target | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.instance_groups) - set(sig.VERSIONED_MODELS))
        if unknown:
            raise ValueError(f"instance groups for {unknown}: only {', '.join(sig.VERSIONED_MODELS)} "
                             "have instances (the ensemble runs its steps')")
        for kind, count in [(self.instance_kind, self.instances), *self.instance_groups.values()]:
            if kind not in ("KIND_CPU", "KIND_GPU") or count < 1:
                raise ValueError(f"instance group ({kind!r}, {count}): want KIND_CPU or KIND_GPU "
                                 "and a count of at least 1")

    def instance_group(self, model: str) -> tuple[Kind, int]:
        """(kind, count) of ``model``'s instances."""
        return self.instance_groups.get(model, (self.instance_kind, self.instances))


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the repository: its contract tensors in ``forward`` order."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    code: str | None = None  # python-backend file in models/


def model_specs(sequence_length: int, dim: int) -> dict[str, ModelSpec]:
    """The single description every config is generated from."""
    history = Tensor(sig.HISTORY, "TYPE_INT64", (sequence_length,))
    history_types = Tensor(sig.HISTORY_TYPES, "TYPE_INT64", (sequence_length,))
    user_embedding = Tensor(sig.USER_EMBEDDING, "TYPE_FP32", (dim,))
    item = Tensor(sig.ITEM, "TYPE_INT64", (1,))
    exclude = Tensor(sig.EXCLUDE, "TYPE_INT64", (-1,))
    k = Tensor(sig.K, "TYPE_INT32", (1,))
    item_index = Tensor(sig.ITEM_INDEX, "TYPE_INT64", (-1,))
    score = Tensor(sig.SCORE, "TYPE_FP32", (-1,))
    return {
        sig.USER_TOWER: ModelSpec(sig.USER_TOWER, (history, history_types), (user_embedding,),
                                  "torchscript.py"),
        # models/retrieve.py reads the last two inputs as EXCLUDE and K, the rest as its query.
        sig.RETRIEVE: ModelSpec(sig.RETRIEVE, (user_embedding, exclude, k), (item_index, score),
                                "retrieve.py"),
        sig.RECOMMEND: ModelSpec(sig.RECOMMEND, (history, history_types, exclude, k), (item_index, score)),
        sig.RECOMMEND_FUSED: ModelSpec(sig.RECOMMEND_FUSED, (history, history_types, exclude, k),
                                       (item_index, score), "retrieve.py"),
        # The same retrieve.py: its query is the one ITEM input.
        sig.SIMILAR_ITEMS: ModelSpec(sig.SIMILAR_ITEMS, (item, exclude, k), (item_index, score),
                                     "retrieve.py"),
    }


def backend_name(target: Target, tensor: Tensor, position: int, is_input: bool) -> str:
    """The name a backend sees: the contract name, or libtorch's positional INPUT__i/OUTPUT__i."""
    if target == "libtorch":
        return f"{'INPUT' if is_input else 'OUTPUT'}__{position}"
    return tensor.name


def _io(cls, spec_tensors, target: Target, is_input: bool):
    return [cls(name=backend_name(target, t, i, is_input), data_type=mc.DataType.Value(t.dtype),
                dims=list(t.dims)) for i, t in enumerate(spec_tensors)]


def _warmup(spec: ModelSpec, target: Target) -> list[mc.ModelWarmup]:
    """One batch-1 request per model at load time, so the first real request does not pay for
    lazy initialisation. ``k`` comes from a file: zero would be rejected as out of range."""
    inputs = {}
    for i, t in enumerate(spec.inputs):
        dims = [WARMUP_EXCLUDE_WIDTH if d == -1 else d for d in t.dims]
        data = mc.ModelWarmup.Input(data_type=mc.DataType.Value(t.dtype), dims=dims)
        if t.name == sig.K:
            data.input_data_file = WARMUP_K_FILE
        else:
            data.zero_data = True
        inputs[backend_name(target, t, i, True)] = data
    return [mc.ModelWarmup(name=f"{spec.name}_warmup", batch_size=1, inputs=inputs)]


def _record_contract(config: mc.ModelConfig, spec: ModelSpec) -> None:
    """Which contract tensor each config tensor is, in config order (features.contract)."""
    config.parameters[sig.CONTRACT_INPUTS].string_value = ",".join(t.name for t in spec.inputs)
    config.parameters[sig.CONTRACT_OUTPUTS].string_value = ",".join(t.name for t in spec.outputs)


def model_config(spec: ModelSpec, target: Target, serving: ServingConfig) -> mc.ModelConfig:
    naming = serving.naming or target
    kind, count = serving.instance_group(spec.name)
    config = mc.ModelConfig(
        name=spec.name,
        max_batch_size=serving.max_batch_size,
        input=_io(mc.ModelInput, spec.inputs, naming, True),
        output=_io(mc.ModelOutput, spec.outputs, naming, False),
        instance_group=[mc.ModelInstanceGroup(count=count, kind=mc.ModelInstanceGroup.Kind.Value(kind))],
        # Serve only the newest version; older ones stay on disk for roll-back.
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )
    _record_contract(config, spec)
    if target == "python":
        config.backend = "python"
        config.parameters["torch_threads"].string_value = str(serving.torch_threads)
        if kind == "KIND_GPU":
            # Let inputs stay where they are (GPU from a GPU step of the ensemble): the model
            # code takes them through DLPack (models/). A CPU instance keeps CPU-only inputs.
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    else:
        config.platform = "pytorch_libtorch"
    if serving.dynamic_batching:
        config.dynamic_batching.SetInParent()  # present even when every field is the default 0
        config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    if serving.warmup:
        config.model_warmup.extend(_warmup(spec, naming))
    return config


def ensemble_config(spec: ModelSpec, steps: list[ModelSpec], target: Target,
                    serving: ServingConfig) -> mc.ModelConfig:
    """Chain ``steps``; tensors flow by contract name, mapped to each step's backend names."""
    naming = serving.naming or target
    config = mc.ModelConfig(
        name=spec.name,
        platform="ensemble",
        max_batch_size=serving.max_batch_size,
        input=_io(mc.ModelInput, spec.inputs, "python", True),
        output=_io(mc.ModelOutput, spec.outputs, "python", False),
    )
    _record_contract(config, spec)
    # -1: the steps' latest loaded version, the only one before the first rollout (``latest 1``).
    # The rollout pins them to the live version; the gateway, asked for a version, does not call
    # the ensemble but its steps, each pinned (gateway/triton_client.py): the maps below are how it
    # learns the steps' tensor names.
    for step in steps:
        config.ensemble_scheduling.step.append(mc.ModelEnsembling.Step(
            model_name=step.name,
            model_version=-1,
            input_map={backend_name(naming, t, i, True): t.name for i, t in enumerate(step.inputs)},
            output_map={backend_name(naming, t, i, False): t.name for i, t in enumerate(step.outputs)},
        ))
    return config


def model_configs(sequence_length: int, dim: int, serving: ServingConfig,
                  target: Target = "python") -> dict[str, mc.ModelConfig]:
    specs = model_specs(sequence_length, dim)
    configs = {name: model_config(spec, target, serving)
               for name, spec in specs.items() if name != sig.RECOMMEND}
    configs[sig.RECOMMEND] = ensemble_config(
        specs[sig.RECOMMEND], [specs[sig.USER_TOWER], specs[sig.RETRIEVE]], target, serving)
    return configs


def scripted_modules(model: Towers) -> dict[str, torch.jit.ScriptModule]:
    """TorchScript of every model that has weights, from one trained model (a TwoTower or an
    ensemble of them: the same inputs, wider vectors; the user towers in their served, stacked
    form)."""
    model = model.eval()
    with torch.no_grad():
        retrieval = TopKRetrieval(model.item_embeddings())
        user_tower = served_user_tower(model)  # the members stacked: see export.model.stacked
    return {
        sig.USER_TOWER: torch.jit.script(user_tower),
        sig.RETRIEVE: torch.jit.script(retrieval),
        sig.RECOMMEND_FUSED: torch.jit.script(FusedRecommender(user_tower, retrieval)),
        sig.SIMILAR_ITEMS: torch.jit.script(SimilarItems(retrieval)),
    }


def export_repository(
    model: Towers,
    catalog: ItemCatalog,
    root: Path,
    *,
    sequence_length: int,
    version: int = 1,
    serving: ServingConfig = ServingConfig(),
    target: Target = "python",
    index: RetrievalIndexConfig | None = None,
    metadata: dict | None = None,
) -> Path:
    """TorchScript the towers and write a complete, loadable repository under ``root``.

    ``index`` (default: ``choose_index`` for the catalog size) decides how ``retrieve``,
    ``recommend_fused`` and ``similar_items`` search: exact scoring, or an ANN index file next to
    their model.pt (python target only). Re-exporting the same version replaces it; other versions
    are left alone.
    """
    index = index or choose_index(catalog.num_items)
    if index.kind != "exact" and target != "python":
        raise ValueError("an ANN index is served by the python target only")
    modules = scripted_modules(model)
    matrix = modules[sig.RETRIEVE].item_embeddings().contiguous().numpy()
    ann = build_index(matrix, index) if index.kind != "exact" else None
    dim = int(matrix.shape[1])
    specs = model_specs(sequence_length, dim)
    for name, config in model_configs(sequence_length, dim, serving, target).items():
        model_dir = root / name
        write_config(config, model_dir)
        version_dir = model_dir / str(version)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        version_dir.mkdir(parents=True)
        if name in modules:
            modules[name].save(str(version_dir / "model.pt"))
            if target == "python":
                shutil.copyfile(MODEL_CODE / specs[name].code, version_dir / "model.py")
            if name in (sig.RETRIEVE, sig.RECOMMEND_FUSED, sig.SIMILAR_ITEMS) and ann is not None:
                ann.save(version_dir / INDEX_FILE)
        if config.model_warmup:
            warmup = model_dir / "warmup"
            warmup.mkdir(exist_ok=True)
            # raw little-endian int32, as Triton reads input_data_file
            np.array([min(10, catalog.num_items)], dtype="<i4").tofile(warmup / WARMUP_K_FILE)
    write_serving_files(root / sig.RETRIEVE / str(version), catalog, version, sequence_length, dim,
                        {"retrieval_index": index.kind, **(metadata or {})})
    if index.kind == "exact":  # an ANN index answers approximately: no exact reference to hold it to
        write_reference(modules[sig.RECOMMEND_FUSED], catalog, sequence_length,
                        root / sig.RETRIEVE / str(version) / REFERENCE_FILE,
                        similar=modules[sig.SIMILAR_ITEMS])
    return root


def write_reference(fused: torch.jit.ScriptModule, catalog: ItemCatalog, sequence_length: int,
                    path: Path, users: int = 16, seed: int = 0,
                    similar: torch.jit.ScriptModule | None = None) -> None:
    """What this version must answer, computed in PyTorch at export time: the rollout's smoke
    check replays these requests against Triton and compares (export/triton/rollout.py). Every
    step gets a random event type, so a server that dropped or misordered HISTORY_TYPES would
    answer differently from the reference. With ``similar``, the same for ``similar_items``: one
    query item per user row, its last two history items excluded."""
    rng = np.random.default_rng(seed)
    k = min(10, catalog.num_items)
    codes = np.array([type_code(name) for name in STEP_TYPES], dtype=np.int64)
    histories = np.zeros((users, sequence_length), dtype=np.int64)
    types = np.zeros((users, sequence_length), dtype=np.int64)  # PAD_TYPE where the history is PAD
    for row, row_types in zip(histories, types, strict=True):
        length = int(rng.integers(1, sequence_length + 1))
        row[-length:] = rng.integers(FIRST_ITEM_INDEX, catalog.num_embeddings, size=length)
        row_types[-length:] = rng.choice(codes, size=length)
    exclude = np.zeros((users, WARMUP_EXCLUDE_WIDTH), dtype=np.int64)
    exclude[:, :2] = histories[:, -2:]
    with torch.no_grad():
        items, scores = fused(torch.from_numpy(histories), torch.from_numpy(types),
                              torch.from_numpy(exclude), torch.full((users, 1), k, dtype=torch.int32))
    reference = {
        "k": k, "history": histories.tolist(), "history_types": types.tolist(),
        "exclude": exclude.tolist(), "item_index": items.tolist(), "score": scores.tolist(),
    }
    if similar is not None:
        query = rng.integers(FIRST_ITEM_INDEX, catalog.num_embeddings, size=(users, 1))
        k_similar = min(10, catalog.num_items - 1)
        with torch.no_grad():
            items, scores = similar(torch.from_numpy(query), torch.from_numpy(exclude),
                                    torch.full((users, 1), k_similar, dtype=torch.int32))
        reference["similar"] = {"k": k_similar, "item": query.tolist(), "exclude": exclude.tolist(),
                                "item_index": items.tolist(), "score": scores.tolist()}
    path.write_text(json.dumps(reference))


def write_serving_files(version_dir: Path, catalog: ItemCatalog, version: int, sequence_length: int,
                        dim: int, metadata: dict | None) -> None:
    """The catalog and serving facts that belong to one retrieval version (read by the gateway)."""
    catalog.to_json(version_dir / sig.CATALOG_FILE)
    info = {"version": version, "sequence_length": sequence_length, "dim": dim, **(metadata or {})}
    (version_dir / sig.SERVING_FILE).write_text(json.dumps(info, indent=2))
