"""Sub-commands of the ``lossmap`` command line (one module each)."""
