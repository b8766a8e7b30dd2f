"""Pythia-1.4B (EleutherAI): GPT-NeoX base model with 154 training checkpoints."""

from modeldeck.plugins import card_hook

register_cards = card_hook("pythia-1.4b")
