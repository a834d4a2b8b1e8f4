"""Word-level LSTM language models with the augmented loss and reused embeddings (Inan et al., 2017)."""

__version__ = "0.1.0"
