"""Launchers for the real services the project runs against: Triton, Kafka (KRaft) and Redis.

Each launcher starts the service as a child process on free ports, waits until it is really
ready, and stops it (and everything it spawned) again. Use them from code, from the CLI
(`python -m stack triton|kafka|redis`) or through the pytest fixtures in `stack.testing`.
"""

from stack.kafka import KafkaBroker
from stack.ports import free_port
from stack.process import ManagedProcess, ServiceStartError
from stack.redis import RedisServer
from stack.service import Service
from stack.triton import TritonServer

__all__ = [
    "KafkaBroker",
    "ManagedProcess",
    "RedisServer",
    "Service",
    "ServiceStartError",
    "TritonServer",
    "free_port",
]
