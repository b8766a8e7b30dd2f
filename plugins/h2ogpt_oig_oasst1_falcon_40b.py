"""h2oGPT-OIG-OASST1-Falcon-40B (H2O.ai): Falcon-40B chat model, h2oGPT human_bot format."""

from modeldeck.plugins import card_hook

register_cards = card_hook("h2ogpt-oig-oasst1-falcon-40b")
