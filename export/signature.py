"""The serving contract: model names and tensor names of the Triton repository.

Imported by the exporter (which writes config.pbtxt from it) and by the gateway (which builds
requests with it). Kept free of heavy imports so the gateway does not pull in torch.
"""

USER_TOWER = "user_tower"
RETRIEVE = "retrieve"
RECOMMEND = "recommend"  # the ensemble: user_tower -> retrieve
RECOMMEND_FUSED = "recommend_fused"  # the same inputs/outputs, one TorchScript step

HISTORY = "HISTORY"  # INT64 [L] item indices, left-padded, most recent last
USER_EMBEDDING = "USER_EMBEDDING"  # FP32 [D]
EXCLUDE = "EXCLUDE"  # INT64 [-1] item indices never to return (PAD=0 allowed as filler)
K = "K"  # INT32 [1]
ITEM_INDEX = "ITEM_INDEX"  # INT64 [-1]
SCORE = "SCORE"  # FP32 [-1] cosine similarity

# Files next to the retrieve model that the gateway needs to turn indices back into items.
CATALOG_FILE = "catalog.json"
SERVING_FILE = "serving.json"
