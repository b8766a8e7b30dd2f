"""modeldeck.cards: the first-party model cards, as YAML data (one file per model).

Nothing here is code. Each card is contributed by its own plugin module in modeldeck.plugins.
"""
