"""prefgame: general-preference, game-theoretic alignment of language models.

The package imports without the optional heavy backends (vLLM, DeepSpeed, TRL); those load lazily
inside the code paths that use them.
"""

from prefgame.errors import PrefgameError
from prefgame.oracle import PreferenceOracle

__version__ = "0.1.0"
__all__ = ["PrefgameError", "PreferenceOracle", "__version__"]
