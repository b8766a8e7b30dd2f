"""modeldeck.runtime: turns a card into a running model (the only place torch is imported).

Empty for now: the generic decoder, checkpoint loading, attention backends and generation land with
the runtime issue. `modeldeck.registry` works without this package's dependencies.
"""
