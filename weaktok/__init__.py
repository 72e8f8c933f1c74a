"""weaktok: weak tokenization of audio with a dynamically chunked U-Net."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """PEP 562: ``from weaktok import WeakTok`` imports weaktok.api (torch) only when asked, so ``import weaktok``
    stays light. The one lazy re-export; tests/unit/test_layout.py knows it by name."""
    if name in ("WeakTok", "WeakTokens"):
        from weaktok import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'weaktok' has no attribute {name!r}")
