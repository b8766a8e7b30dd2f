"""Aira-2-1B1 (nicholasKluge): TinyLlama-1.1B instruction-tuned, special-token prompt markers."""

from modeldeck.plugins import card_hook

register_cards = card_hook("aira-2-1b1")
