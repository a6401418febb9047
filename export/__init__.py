"""Offline stage: load and clean behaviour logs, train the two towers, evaluate, export to Triton."""
