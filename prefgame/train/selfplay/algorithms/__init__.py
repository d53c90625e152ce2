"""Self-play algorithms, one file each. A file defines the algorithm's iteration (sample, ask the oracle,
optimize, with :class:`~prefgame.train.selfplay.runtime.SelfPlay`'s operations) and registers one
:class:`~prefgame.train.selfplay.registry.AlgorithmSpec`; nothing else lists algorithms."""
