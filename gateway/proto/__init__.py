"""The gateway's gRPC API: ``recsys.proto`` and the modules generated from it (``make proto``).

``recsys_pb2*.py`` and ``recsys_pb2.pyi`` are generated: do not edit them by hand.
"""
