"""Helpers shared by the unit and integration tests: each lives here once.

- ``gateway``: gateway settings for tests against the session's services, and the wait for
  ``/readyz``.
- ``grpc``: gRPC messages in the REST API's JSON shape.
- ``kafka``: reading a whole topic, to its end.
- ``models``: a model whose event types change its answers (a fresh one ignores them).
- ``ranking``: comparing two answers of the model, exact where floats allow.
- ``waiting``: wait for a condition (never a fixed sleep).
"""
