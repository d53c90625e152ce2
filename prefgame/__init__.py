"""prefgame: general-preference, game-theoretic alignment of language models.

The package imports without the optional heavy backends (vLLM, DeepSpeed, TRL); those load lazily
inside the code paths that use them. ``import prefgame`` itself loads no library (PyTorch included),
so the command line starts at once and handles Ctrl-C from its first moment.
"""

from typing import Any

from prefgame.errors import PrefgameError

__version__ = "0.1.0"
__all__ = ["PrefgameError", "PreferenceOracle", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "PreferenceOracle":  # the protocol module imports torch: loaded on first use
        from prefgame.oracle import PreferenceOracle

        return PreferenceOracle
    raise AttributeError(f"module 'prefgame' has no attribute {name!r}")
