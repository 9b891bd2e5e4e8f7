"""agnews: a Hydra-driven research framework for AG News topic classification.

Kept import-light on purpose: the CLI composes configs without importing torch or transformers.
"""

__version__ = "0.1.0"
