"""Sub-commands of the ``looptool`` console script."""
