"""Astrid-1B (PAIXAI): GPT-NeoX 1B instruction-tuned with H2O LLM Studio."""

from modeldeck.plugins import card_hook

register_cards = card_hook("astrid-1b")
