"""The text side of MKTN: word embeddings (learned or GloVe) and sentence encoders (learned or MiniLM)."""

from mktn.text.encoder import TextEncoder, TextEncoding

__all__ = ["TextEncoder", "TextEncoding"]
