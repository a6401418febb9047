"""Serve a TorchScript module (``model.pt`` next to this file) with dynamic batching.

Input and output names and dtypes come from the model's config.pbtxt, never from this file.
Triton hands ``execute`` a list of requests: their inputs are concatenated, one forward runs, and
the outputs are split back per request, otherwise dynamic batching buys nothing.

Device: the instance group's. A ``KIND_CPU`` instance works on numpy views of Triton's buffers
(no copy in, one cast-free view out). A ``KIND_GPU`` instance loads the module onto
``cuda:<model_instance_device_id>``, takes inputs through DLPack wherever Triton put them (GPU
when another GPU step produced them and the config says ``FORCE_CPU_ONLY_INPUT_TENSORS: "no"``,
else CPU: copied to the device once, batched) and answers with DLPack views of the device result.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack


def instance_device(args) -> torch.device:
    """The instance's device: ``cuda:<id>`` for a KIND_GPU instance, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device(f"cuda:{int(args['model_instance_device_id'])}")
    return torch.device("cpu")


def torch_dtype(numpy_dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]
        ]
        # Each instance is its own process: parallelism comes from instances, and torch's own
        # threads in every process would fight over the cores (measured: 10x worse p99).
        torch.set_num_threads(int(config["parameters"]["torch_threads"]["string_value"]))
        self.device = instance_device(args)
        self.on_gpu = self.device.type == "cuda"
        self.output_dtypes = [torch_dtype(dtype) for _, dtype in self.outputs]
        path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    def _batch(self, requests):
        """One tensor per input, the requests' rows concatenated, on the instance's device, and
        each request's row count."""
        if not self.on_gpu:  # the numpy path: views of Triton's CPU buffers, one concatenation
            arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                      for name in self.inputs]
            return [torch.from_numpy(np.concatenate(a)) for a in arrays], [a.shape[0] for a in arrays[0]]
        parts = [[dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(r, name).to_dlpack())
                  for r in requests] for name in self.inputs]
        # Concatenated where the first request's rows are (host inputs: one copy to the device).
        batch = [torch.cat([p.to(ps[0].device) for p in ps]).to(self.device) for ps in parts]
        return batch, [int(p.shape[0]) for p in parts[0]]

    def execute(self, requests):
        try:
            inputs, sizes = self._batch(requests)
            with torch.inference_mode():
                result = self.model(*inputs)
        except (RuntimeError, ValueError) as exc:
            # A batch-level failure is reported to each request; the model instance stays up.
            error = pb_utils.TritonError(f"forward failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        results = result if isinstance(result, (tuple, list)) else (result,)
        if self.on_gpu:  # cast on the device; row slices of a contiguous tensor stay contiguous
            results = [out.to(dtype).contiguous()
                       for out, dtype in zip(results, self.output_dtypes, strict=False)]
        responses, offset = [], 0
        for size in sizes:
            if self.on_gpu:
                tensors = [pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(out[offset:offset + size]))
                           for (name, _), out in zip(self.outputs, results, strict=False)]
            else:
                tensors = [
                    pb_utils.Tensor(name, out[offset:offset + size].numpy().astype(dtype, copy=False))
                    for (name, dtype), out in zip(self.outputs, results, strict=False)
                ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += size
        return responses
