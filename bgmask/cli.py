"""The classifier trainers' command line: flags built from :mod:`bgmask.config`, composable ``--config`` YAML files,
and the translation to a :class:`~bgmask.config.TrainConfig` for the library.

``--config`` may be given several times (later files win) and a YAML file may inherit from others with
``_base_: FILE`` or ``_base_: [FILE, ...]`` (paths relative to the file; its own keys win). Flags given on the
command line always win over every file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from bgmask import benchmarks, strategies
from bgmask.config import GROUPS, TrainConfig
from bgmask.errors import BgmaskError, ConfigError, ConfigFileError
from bgmask.infra.argparsing import BoolFlag, parser_from_doc, plain
from bgmask.run.pipeline import run

BASE_KEY = "_base_"


def add_options(parser: argparse.ArgumentParser, options_cls: type, skip: set[str] = frozenset()) -> None:
    """One argument group from a config dataclass: a flag per field (but those in ``skip``), with its default, type,
    choices and help.

    On/off fields become ``--name`` / ``--no_name``.
    """
    group = parser.add_argument_group(getattr(options_cls, "section", options_cls.__name__))
    hints = typing.get_type_hints(options_cls)
    for f in dataclasses.fields(options_cls):
        if f.name in skip:
            continue
        kind = _flag_type(hints[f.name])
        text = plain(f.metadata.get("help"))
        meta = {"default": f.default, "help": text.replace("%", "%%") if text else None}  # argparse formats help
        if kind is bool:
            group.add_argument(f"--{f.name}", action=BoolFlag, **meta)
        elif kind is tuple:
            group.add_argument(f"--{f.name}", type=float, nargs=2, metavar=f.metadata.get("metavar"), **meta)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(f"--{f.name}", type=kind, choices=choices, **meta,
                               metavar=None if choices else _metavar(f.name, kind))


def _metavar(name: str, kind: type) -> str:
    if "_path" in name or name.endswith("_dir") or name == "checkpoint":
        return "PATH"
    return {int: "N", float: "X"}.get(kind, "NAME")


def _flag_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple
    if args:  # X | None
        return _flag_type(args[0])
    return hint


USAGE = "%(prog)s --data_path PATH --snapshot_dir DIR [--config YAML ...]{masking} [flags below]"


def build_parser(strategy_names: Sequence[str], description: str | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of an entry point that trains the given strategies (``--masking`` picks one when several).
    ``description``'s first paragraph heads the help; the rest (examples) follows the flags."""
    masking = f" [--masking {{{','.join(strategy_names)}}}]" if len(strategy_names) > 1 else ""
    p = parser_from_doc(description, prog, USAGE.format(masking=masking))
    p.epilog = f"examples:\n{p.epilog}" if p.epilog else None
    p.add_argument("--config", action="append", default=None, metavar="YAML",
                   help="YAML file whose keys (flag names without --) set defaults; may be repeated (later files "
                        "win) and may inherit with _base_: FILE. Command-line flags still win")
    for group in GROUPS:
        add_options(p, group)
    classes = [strategies.get(name) for name in strategy_names]
    if len(classes) > 1:
        p.add_argument("--masking", choices=[c.name for c in classes], default=classes[0].name,
                       help="; ".join(f"{c.name}: {c.summary}" for c in classes).replace("%", "%%"))
    for cls in classes:
        if cls.Options is not None:
            add_options(p, cls.Options)
    added = {a.dest for a in p._actions}
    for name in benchmarks.names():  # every benchmark's folders; fields shared between benchmarks once
        options = benchmarks.get(name).Options
        if options is not None and not {f.name for f in dataclasses.fields(options)} <= added:
            add_options(p, options, skip=added)
            added |= {f.name for f in dataclasses.fields(options)}
    p.set_defaults(strategy_names=list(strategy_names))
    return p


def load_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The settings of a YAML config file, with its ``_base_`` files merged in first (its own keys win)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigFileError(f"--config {path} inherits from itself ({' -> '.join(str(p) for p in _seen)})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigFileError(f"--config {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"--config {path} must be a mapping of flag names to values")
    bases = values.pop(BASE_KEY, None) or []
    merged = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged.update(load_config_file(path.parent / base, (*_seen, path.resolve())))
    merged.update(values)
    return merged


def parse_with_config(parser: argparse.ArgumentParser, argv=None, settings: dict | None = None) -> argparse.Namespace:
    """timm-style parsing: ``--config`` YAML keys become defaults (after ``settings``, e.g. a run's ``args.yaml``),
    explicit flags override them."""
    known, _ = parser.parse_known_args(argv)
    values = dict(settings or {})
    try:
        for path in known.config or []:
            values.update(load_config_file(path))
    except ConfigFileError as e:
        parser.error(str(e))
    valid = {a.dest for a in parser._actions} - {"help", "config"}
    unknown = sorted(set(values) - valid)
    if unknown:
        source = f"--config {', '.join(known.config)}" if known.config else "the saved settings"
        parser.error(f"{source} has unknown key(s) {', '.join(unknown)}; keys are flag names without the leading -- "
                     f"(see --help)")
    parser.set_defaults(**values)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, strategies.Strategy]:
    """The library's view of a parsed command line: the typed config (strategy and benchmark defaults resolved) and
    the strategy."""
    values = {k: v for k, v in vars(args).items() if k not in ("config", "strategy_names")}
    names = getattr(args, "strategy_names", None) or [values.get("masking", "none")]
    name = values.pop("masking", names[0])
    strategy = strategies.get(name)()
    benchmark = benchmarks.get(values.get("dataset", "cub"))()
    values = _own_options(values, strategy.Options, {n: strategies.get(n).Options for n in names if n != name},
                          f"--masking {name}", "strategy", "pick that strategy with --masking")
    values = _own_options(values, benchmark.Options, {n: benchmarks.get(n).Options for n in benchmarks.names()},
                          f"--dataset {benchmark.name}", "benchmark", "pick that benchmark with --dataset")
    cfg = TrainConfig.from_flat({**values, "masking": name}, strategy.Options, benchmark.Options)
    return benchmarks.resolve_config(cfg, benchmark, strategy.needs(cfg)), strategy


def _own_options(values: dict, own_cls: type | None, others: dict[str, type | None], chosen: str, axis: str,
                 fix: str) -> dict:
    """``values`` without the options of the other strategies (or benchmarks) an entry point offers: dropped at
    their defaults, refused when set (they would be ignored)."""
    own = {f.name for f in dataclasses.fields(own_cls)} if own_cls else set()
    defaults = {f.name: (n, f.default) for n, cls in others.items() if cls
                for f in dataclasses.fields(cls) if f.name not in own}
    unused = [f"--{k} ({defaults[k][0]})" for k, v in values.items() if k in defaults and v != defaults[k][1]]
    if unused:
        raise ConfigError(f"{chosen} does not use {', '.join(unused)}: these are options of another {axis}; drop "
                          f"them or {fix}.")
    return {k: v for k, v in values.items() if k not in defaults}


def parse_config(strategy_names: Sequence[str], argv=None, description: str | None = None,
                 settings: dict | None = None):
    """Parse a command line of an entry point (and ``settings``, flag name -> value, under it) into
    ``(TrainConfig, Strategy)``."""
    return config_from_args(parse_with_config(build_parser(strategy_names, description), argv, settings))


def saved_settings(path: str | Path) -> dict:
    """A run's ``args.yaml``, read as today's flags. Files written before benchmarks owned their options hold every
    benchmark's folders (a waterbirds or csv run's, the cub benchmark's too): keys of another benchmark are dropped."""
    values = load_config_file(path)
    own = benchmarks.get(values.get("dataset", "cub")).Options
    own_names = {f.name for f in dataclasses.fields(own)} if own else set()
    others = {f.name for n in benchmarks.names() if benchmarks.get(n).Options
              for f in dataclasses.fields(benchmarks.get(n).Options)} - own_names
    return {k: v for k, v in values.items() if k not in others}


def main(strategy_names: Sequence[str], argv=None, description: str | None = None, prog: str | None = None) -> int:
    """A classifier entry point: parse, check, train. Exit code 2 with a message for anything the user can fix."""
    args = parse_with_config(build_parser(strategy_names, description, prog), argv)
    return main_guard(lambda: run(*config_from_args(args), config_files=args.config or []))


def main_guard(fn: Callable[[], object]) -> int:
    """Run an entry point, turning the library's errors into a one-paragraph message and exit code 2."""
    try:
        fn()
    except BgmaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
