"""GPT-JX-3B: a re-upload of Cerebras BTLM-3B-8K (ALiBi, SwiGLU, muP), 8k context."""

from modeldeck.plugins import card_hook

register_cards = card_hook("gpt-jx-3b")
