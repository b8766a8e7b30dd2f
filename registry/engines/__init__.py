"""Engines besides modeldeck's own runtime, as data built from a card (torch-free): vllm.py, llamacpp.py, and the
environments they run in (environment.py)."""

ENGINES = ("modeldeck", "vllm", "llama.cpp")

__all__ = ["ENGINES"]
