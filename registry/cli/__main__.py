"""`python -m modeldeck.registry.cli`: the `modeldeck` command."""

from modeldeck.registry.cli import main

main()
