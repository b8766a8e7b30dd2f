"""tiny-neox (modeldeck): the bundled demo GPT-NeoX, trained on Python's documentation by scripts/train_demo.py."""

from modeldeck.plugins import card_hook

register_cards = card_hook("tiny-neox")
