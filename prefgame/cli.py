"""The ``prefgame`` command line.

``prefgame <command> --config FILE key=value ...`` runs a job whose settings are one config
dataclass; ``prefgame <command> --help`` lists every key with its type, default and meaning.
Errors a user can cause end with one line on stderr and exit code 2; an interrupted job exits 130.
Warnings that libraries emit during a command are held back and printed after it (they are also in
the run's ``log.txt``), so that an error stays one line whatever the libraries say on the way.
Commands and their config classes are imported lazily so that ``prefgame --help`` is fast: the command
table (:data:`JOBS`, :data:`TOOLS`) names each command's module by path and loads it on demand. That is
how ``quickstart`` and ``evaluate``, whose modules live in the ``evaluation`` package, are reached
without prefgame importing ``evaluation`` (docs/design.md §2.2).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from prefgame.console import held_library_messages, print_held
from prefgame.errors import PrefgameError


@dataclass(frozen=True)
class JobCommand:
    """A config-driven job: ``run(cfg)`` with ``cfg`` an instance of ``config``."""

    name: str
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function"
    example: str = ""


@dataclass(frozen=True)
class ToolCommand:
    """A command with its own positional arguments (``data validate FILE``)."""

    name: str
    help: str
    module: str  # exposes add_arguments(parser) and main(args) -> int


JOBS: list[JobCommand] = [
    JobCommand(
        "quickstart",
        "run the whole pipeline on the embedded arena and write runs/quickstart/report.md",
        "evaluation.quickstart:QuickstartConfig",
        "evaluation.quickstart:run",
        "prefgame quickstart",
    ),
    JobCommand(
        "arena",
        "build the arena world and export its data sets (pairs, ratings, battles, SFT corpus)",
        "prefgame.arena.job:ArenaJobConfig",
        "prefgame.arena.job:run",
        "prefgame arena output_dir=runs/arena",
    ),
    JobCommand(
        "sft",
        "supervised fine-tuning of a causal LM on prompt/response data",
        "prefgame.train.sft:SFTConfig",
        "prefgame.train.sft:run",
        "prefgame sft --config configs/sft/arena.yaml train.max_steps=200",
    ),
    JobCommand(
        "selfplay",
        "LM self-play on the KL-regularized preference game (algorithms: prefgame selfplay --help)",
        "prefgame.train.selfplay:SelfPlayConfig",
        "prefgame.train.selfplay:run",
        "prefgame selfplay --config configs/selfplay/nash_md.yaml policy.name_or_path=runs/quickstart/pi0/model",
    ),
    JobCommand(
        "dpo",
        "DPO family (dpo, ipo, cdpo, length-regularized), offline on pairs or online iterative with an oracle",
        "prefgame.train.dpo:DPOConfig",
        "prefgame.train.dpo:run",
        "prefgame dpo --config configs/dpo/arena.yaml policy.name_or_path=runs/quickstart/pi0/model",
    ),
    JobCommand(
        "ppo",
        "PPO from π0 against a Bradley–Terry reward model (value head, GAE, clipped objectives, KL to π0)",
        "prefgame.train.ppo:PPOConfig",
        "prefgame.train.ppo:run",
        "prefgame ppo --config configs/ppo/arena.yaml policy.name_or_path=runs/quickstart/pi0/model "
        "reward.path=runs/ppo-reward",
    ),
    JobCommand(
        "online",
        "online iterative RLHF: rounds of self-play against a refitted preference model and new oracle labels",
        "prefgame.train.online:OnlineConfig",
        "prefgame.train.online:run",
        "prefgame online --config configs/online/arena.yaml policy.name_or_path=runs/quickstart/pi0/model",
    ),
    JobCommand(
        "train-pm",
        "train a preference model: bt reward, gpm / pairwise general preference, gated multi-objective",
        "prefgame.train.pm:PMConfig",
        "prefgame.train.pm:run",
        "prefgame train-pm --config configs/pm/gpm.yaml train.max_steps=400",
    ),
    JobCommand(
        "score",
        "score a pairs file with a trained preference model (P(chosen ≻ rejected) per row)",
        "prefgame.score:ScoreConfig",
        "prefgame.score:score",
        "prefgame score model=runs/pm-gpm data=runs/arena/pairs.jsonl out=runs/pm-gpm/scored.jsonl",
    ),
    JobCommand(
        "generate",
        "write model outputs for evaluation (jsonl: prompt, output, generator, lengths) from any causal LM",
        "prefgame.generate:GenerateConfig",
        "prefgame.generate:run",
        "prefgame generate model=runs/quickstart/pi0/model prompts=arena max_prompts=200 out=runs/eval/pi0.jsonl",
    ),
]

TOOLS: list[ToolCommand] = [
    ToolCommand("data", "inspect and validate preference data sets", "prefgame.data.validate"),
    ToolCommand(
        "evaluate",
        "win-rate and agreement reports; AlpacaEval, Arena-Hard, MT-Bench and RewardBench from their own files",
        "evaluation.evaluate",
    ),
]


def _load(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="prefgame",
        description="General-preference, game-theoretic alignment of language models.",
        epilog="Run 'prefgame <command> --help' for the config keys of a command.",
    )
    from prefgame import __version__

    parser.add_argument("--version", action="version", version=f"prefgame {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for job in JOBS:
        epilog = None
        if wanted == job.name:  # import the config class only for the command asked about
            from prefgame.config import config_help

            epilog = f"example:\n  {job.example}\n\nconfig keys (set in --config FILE or as key=value):\n"
            epilog += config_help(_load(job.config))
        p = sub.add_parser(
            job.name,
            help=job.help,
            description=job.help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", metavar="FILE", help="YAML config file (keys listed below)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
        p.set_defaults(_job=job)
    for tool in TOOLS:
        p = sub.add_parser(tool.name, help=tool.help, description=tool.help)
        if wanted == tool.name:
            _load(f"{tool.module}:add_arguments")(p)
        p.set_defaults(_tool=tool)
    return parser


def _quiet_library_progress_bars() -> None:
    """Jobs print their own progress lines; the per-file bars of transformers (weight loading, saving)
    and datasets (split generation) would bury them."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # at any moment, imports and argument parsing included
        return interrupted(command)


def interrupted(command: str | None) -> int:
    """Ctrl-C: one line and exit code 130; a second Ctrl-C while the process ends is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"prefgame{' ' + command if command else ''}: interrupted", file=sys.stderr)
    return 130


def _main(argv: list[str]) -> int:
    parser = _build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides on both sides of --config: argparse leaves those after it unparsed
        if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
            parser.parse_args(argv)  # argparse's one-line usage error for what it cannot place
        args.overrides += extra
    if args.command is None:
        parser.print_help()
        return 0
    with held_library_messages() as held:
        try:
            if hasattr(args, "_job"):
                from prefgame.config import check_output_paths, load_config

                cfg = load_config(_load(args._job.config), args.config, args.overrides)
                check_output_paths(cfg)
                _quiet_library_progress_bars()
                run: Callable[[Any], Any] = _load(args._job.run)
                run(cfg)
                code = 0
            else:
                code = int(_load(f"{args._tool.module}:main")(args) or 0)
        except PrefgameError as exc:  # one line: the held warnings are in log.txt, not on the console
            return _error(args.command, str(exc))
        except OSError as exc:
            if exc.errno not in USER_OS_ERRORS:
                print_held(held, args.command)
                raise
            return _error(args.command, _os_error_line(exc))
        except KeyboardInterrupt:
            return interrupted(args.command)
        except BaseException:  # a crash: everything that may explain it, then the traceback
            print_held(held, args.command)
            raise
    print_held(held, args.command)
    _close_process_group()
    return code


# Failures of the machine's files that the user causes and fixes (permissions, a full or read-only
# disk, a path that is a file or a folder where the other was needed)
USER_OS_ERRORS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
     errno.EEXIST, errno.ENAMETOOLONG}
)  # fmt: skip


def _os_error_line(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where} (check the path and its permissions, and the free disk space)"


def _error(command: str, message: str) -> int:
    print(f"prefgame {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _close_process_group() -> None:
    """A job run by torchrun / accelerate launch ends by closing its process group: a process that exits
    with gloo's threads still joinable is aborted ("terminate called without an active exception")."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
