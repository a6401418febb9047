"""Python-backend model code, copied as ``model.py`` into the Triton model repository.

These files are self-contained (torch, numpy and Triton's own utilities only) so the same repository
works in the bundled CPU server and in an NGC container without this project installed.
"""
