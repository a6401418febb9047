"""Top-k items, excluding items the user has already seen: the `retrieve` and `recommend_fused` models.

``model.pt`` is export.model.retrieval.TopKRetrieval (query: the user embedding) or
export.model.retrieval.FusedRecommender (query: the history's item indices and event-type codes);
both expose ``embed``, ``scores``, ``top_k`` and ``num_items``, taking the query tensors in config
order, so one file serves both. Scores for every request in the batch come from one
matrix product; masking and top-k are per request because each request has its own ``k`` and its
own exclusion list (requests sharing both are grouped). A bad request gets an error of its own;
the rest of the batch is answered.

Device: the instance group's, as in torchscript.py. A ``KIND_CPU`` instance works on numpy views
of Triton's buffers; a ``KIND_GPU`` one holds the module (the item matrix) on
``cuda:<model_instance_device_id>``, takes inputs through DLPack (host inputs copied once per
batch) and answers with DLPack views of the device result. The ANN path (faiss) is CPU only: a
version that ships an index is served on the CPU whatever the instance kind.
"""

import json
import operator
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

INDEX_FILE = "index.faiss"
# Index ids are catalog rows minus the reserved PAD and OOV rows (export.model.ann's convention).
FIRST_ITEM_INDEX = 2


def instance_device(args) -> torch.device:
    """The instance's device: ``cuda:<id>`` for a KIND_GPU instance, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device(f"cuda:{int(args['model_instance_device_id'])}")
    return torch.device("cpu")


def torch_dtype(numpy_dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype


def as_torch(tensor) -> torch.Tensor:
    """A Triton tensor as a torch tensor on the device Triton put it on (no copy)."""
    return dlpack.from_dlpack(tensor.to_dlpack())


def any_numpy(tensor) -> np.ndarray:
    """A Triton tensor on the host, wherever it is (a GPU instance may get GPU inputs)."""
    return tensor.as_numpy() if tensor.is_cpu() else as_torch(tensor).cpu().numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        # Input order in config.pbtxt: the query (one tensor or several), then exclusions, then k.
        names = [i["name"] for i in config["input"]]
        self.query_inputs, (self.exclude_input, self.k_input) = names[:-2], names[-2:]
        (self.index_output, self.index_dtype), (self.score_output, self.score_dtype) = (
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]
        )
        # Each instance is its own process: parallelism comes from instances, and torch's own
        # threads in every process would fight over the cores (measured: 10x worse p99).
        torch.set_num_threads(int(config["parameters"]["torch_threads"]["string_value"]))
        # Inputs are on the host unless the config lets them stay on a GPU (GPU instances).
        self.numpy = (any_numpy if args.get("model_instance_kind") == "GPU"
                      else operator.methodcaller("as_numpy"))
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        # Large catalogs ship an ANN index (export.model.ann.choose_index); small ones score exactly.
        index_path = path.parent / INDEX_FILE
        self.device = torch.device("cpu") if index_path.exists() else instance_device(args)
        self.on_gpu = self.device.type == "cuda"
        self.index_torch_dtype, self.score_torch_dtype = (torch_dtype(d) for d in (self.index_dtype,
                                                                                   self.score_dtype))
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.num_items = int(self.model.num_items())
        self.index = None
        if index_path.exists():
            import faiss

            faiss.omp_set_num_threads(torch.get_num_threads())
            self.index = faiss.read_index(str(index_path))

    def _k(self, request, rows):
        k = self.numpy(pb_utils.get_input_tensor_by_name(request, self.k_input)).reshape(-1)
        if k.size != rows or np.any(k != k[0]):
            raise ValueError(f"{self.k_input} must hold one equal value per row")
        k = int(k[0])
        if not 1 <= k <= self.num_items:
            raise ValueError(f"{self.k_input}={k} is outside [1, {self.num_items}] (catalog size)")
        return k

    def execute(self, requests):
        if self.on_gpu:
            return self._execute_on_device(requests)
        queries = [[self.numpy(pb_utils.get_input_tensor_by_name(r, name)) for name in self.query_inputs]
                   for r in requests]
        sizes = [q[0].shape[0] for q in queries]  # Triton gives every input of a request one batch size
        starts = np.cumsum([0] + sizes)
        responses = [None] * len(requests)
        # Requests with the same k and exclusion width (the common case: clients pad exclusions
        # to fixed widths) share one masked top-k call; each request is validated on its own.
        groups = {}
        for i, request in enumerate(requests):
            try:
                k = self._k(request, sizes[i])
                exclude = self.numpy(pb_utils.get_input_tensor_by_name(request, self.exclude_input))
                groups.setdefault((k, exclude.shape[1]), []).append((i, exclude))
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(exc)))
        with torch.inference_mode():
            inputs = [torch.from_numpy(np.concatenate([q[j] for q in queries]))
                      for j in range(len(self.query_inputs))]
            if self.index is None:
                scores = self.model.scores(*inputs)
            else:
                vectors = self.model.embed(*inputs).numpy()
            for (k, _), members in groups.items():
                rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i, _ in members])
                exclude = torch.from_numpy(np.concatenate([e for _, e in members]).astype(np.int64))
                if self.index is None:
                    index, score = self.model.top_k(scores.index_select(0, rows), exclude, k)
                else:
                    index, score = self._ann_top_k(vectors[rows.numpy()], inputs, rows, exclude, k)
                index = index.numpy().astype(self.index_dtype)
                score = score.numpy().astype(self.score_dtype)
                offset = 0
                for i, _ in members:
                    n = sizes[i]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor(self.index_output, index[offset:offset + n]),
                        pb_utils.Tensor(self.score_output, score[offset:offset + n]),
                    ])
                    offset += n
        return responses

    def _gather(self, parts):
        """Torch tensors (from DLPack) as one batch on the device: host parts copied once."""
        return torch.cat([p.to(parts[0].device) for p in parts]).to(self.device)

    def _execute_on_device(self, requests):
        """``execute`` for a GPU instance (exact scoring): the same grouping, on the device."""
        queries = [[as_torch(pb_utils.get_input_tensor_by_name(r, name)) for r in requests]
                   for name in self.query_inputs]
        sizes = [int(q.shape[0]) for q in queries[0]]
        starts = np.cumsum([0] + sizes).tolist()
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                k = self._k(request, sizes[i])
                exclude = as_torch(pb_utils.get_input_tensor_by_name(request, self.exclude_input))
                groups.setdefault((k, int(exclude.shape[1])), []).append((i, exclude))
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(exc)))
        with torch.inference_mode():
            scores = self.model.scores(*[self._gather(parts) for parts in queries])
            for (k, _), members in groups.items():
                rows = torch.cat([torch.arange(starts[i], starts[i + 1], device=self.device)
                                  for i, _ in members])
                exclude = self._gather([e for _, e in members]).to(torch.int64)
                index, score = self.model.top_k(scores.index_select(0, rows), exclude, k)
                index = index.to(self.index_torch_dtype).contiguous()
                score = score.to(self.score_torch_dtype).contiguous()
                offset = 0
                for i, _ in members:  # row slices of a contiguous tensor: DLPack views, no copy
                    n = sizes[i]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor.from_dlpack(self.index_output,
                                                    dlpack.to_dlpack(index[offset:offset + n])),
                        pb_utils.Tensor.from_dlpack(self.score_output,
                                                    dlpack.to_dlpack(score[offset:offset + n])),
                    ])
                    offset += n
        return responses

    def _ann_top_k(self, vectors, inputs, rows, exclude, k):
        """Over-fetch k + exclusions from the index and drop the excluded; a row left with fewer
        than k falls back to exact scoring, so exclusions can never shorten an answer."""
        found_scores, found = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                                k + exclude.shape[1])
        found = np.where(found >= 0, found + FIRST_ITEM_INDEX, -1)
        out_index = np.empty((len(vectors), k), dtype=np.int64)
        out_score = np.empty((len(vectors), k), dtype=np.float32)
        for r in range(len(vectors)):
            banned = set(exclude[r].tolist())
            keep = [(i, s) for i, s in zip(found[r].tolist(), found_scores[r].tolist(), strict=True)
                    if i >= 0 and i not in banned][:k]
            if len(keep) < k:
                row = rows[r:r + 1]
                query = [t.index_select(0, row) for t in inputs]
                index, score = self.model.top_k(self.model.scores(*query), exclude[r:r + 1], k)
                out_index[r], out_score[r] = index[0].numpy(), score[0].numpy()
            else:
                out_index[r] = [i for i, _ in keep]
                out_score[r] = [s for _, s in keep]
        return torch.from_numpy(out_index), torch.from_numpy(out_score)
