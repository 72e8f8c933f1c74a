"""weaktok: weak tokenization of audio with a dynamically chunked U-Net."""

__version__ = "0.1.0"
