"""Engines besides modeldeck's own runtime, as data built from a card (torch-free): vllm.py."""

ENGINES = ("modeldeck", "vllm")

__all__ = ["ENGINES"]
