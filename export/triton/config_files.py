"""``config.pbtxt`` in and out, and the names of the files a version carries: what the rollout CLI
needs from the repository without importing what writes models (torch), so that a rollout command
starts fast and a second one started beside it is cheap."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton.locking import write_atomic

REFERENCE_FILE = "reference.json"  # retrieve/<v>/: the exporter's requests and PyTorch's answers


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    write_atomic(path, text_format.MessageToString(config))  # Triton may be reading it (issue 15)
    return path


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def read_config_json(path: Path) -> dict:
    """A ``config.pbtxt`` in the JSON form Triton answers ``/v2/models/<m>/config`` with (proto
    field names), e.g. for ``features.contract.tensor_names``."""
    return json_format.MessageToDict(read_config(path), preserving_proto_field_name=True)
