"""Top-k items, excluding items the user has already seen: the `retrieve` and `recommend_fused` models.

``model.pt`` is export.model.retrieval.TopKRetrieval (query: the user embedding) or
export.model.retrieval.FusedRecommender (query: the history's item indices and event-type codes);
both expose ``embed``, ``scores``, ``top_k`` and ``num_items``, taking the query tensors in config
order, so one file serves both. Scores for every request in the batch come from one
matrix product; masking and top-k are per request because each request has its own ``k`` and its
own exclusion list (requests sharing both are grouped). A bad request gets an error of its own;
the rest of the batch is answered.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

INDEX_FILE = "index.faiss"
# Index ids are catalog rows minus the reserved PAD and OOV rows (export.model.ann's convention).
FIRST_ITEM_INDEX = 2


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
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.num_items = int(self.model.num_items())
        # Large catalogs ship an ANN index (export.model.ann.choose_index); small ones score exactly.
        self.index = None
        index_path = path.parent / INDEX_FILE
        if index_path.exists():
            import faiss

            faiss.omp_set_num_threads(torch.get_num_threads())
            self.index = faiss.read_index(str(index_path))

    def _k(self, request, rows):
        k = pb_utils.get_input_tensor_by_name(request, self.k_input).as_numpy().reshape(-1)
        if k.size != rows or np.any(k != k[0]):
            raise ValueError(f"{self.k_input} must hold one equal value per row")
        k = int(k[0])
        if not 1 <= k <= self.num_items:
            raise ValueError(f"{self.k_input}={k} is outside [1, {self.num_items}] (catalog size)")
        return k

    def execute(self, requests):
        queries = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.query_inputs]
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
                exclude = pb_utils.get_input_tensor_by_name(request, self.exclude_input).as_numpy()
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
