"""Dataclass configs that serve both the CLI and YAML (the trl pattern).

`add_dataclass_arguments` turns each field into a `--flag` (help from `field(metadata={"help": ...})`,
choices from `metadata["choices"]`); `build_config` merges defaults <- YAML file <- explicit flags, so
a flag given on the command line always wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type inside Optional[...], whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) != len(typing.get_args(tp))
    return tp, False


def _list_parser(item_type: Any):
    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in text.split(",") if x.strip()]

    return parse


def _optional(parser):
    def parse(text: str):
        return None if text.lower() in {"none", "null", ""} else parser(text)

    return parse


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_with_default(text: str, default: Any) -> str:
    """The help line with its default stated once: not again where the text already says it, and not
    for None (an unset option, which the text explains)."""
    if default is None or "default" in text:
        return text
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})".strip()


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field; unset flags stay absent from the namespace."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp, nullable = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": help_with_default(f.metadata.get("help", ""), default)}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(tp) is list:
                conv = _list_parser(typing.get_args(tp)[0])
                kwargs["metavar"] = "A,B,..."
            else:
                conv = tp
            kwargs["type"] = _optional(conv) if nullable else conv
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f.name), **kwargs)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML in {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option names to values")
    return data


def build_config(cls: type[T], values: dict, source: str = "config") -> T:
    """Instantiate `cls` from a dict, rejecting unknown keys with a one-line error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown option(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        tp, _ = _base_type(hints[key])
        if typing.get_origin(tp) is list and isinstance(value, str):
            value = _list_parser(typing.get_args(tp)[0])(value)
        clean[key] = value
    try:
        cfg = cls(**clean)
    except TypeError as exc:
        raise UserError(f"bad {source}: {exc}") from None
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_from_args(cls: type[T], ns: argparse.Namespace, yaml_path: str | Path | None = None) -> T:
    """defaults <- YAML (if given) <- explicit command-line flags."""
    values = load_yaml(yaml_path) if yaml_path else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build_config(cls, values, source=str(yaml_path or "flags"))


def to_yaml(cfg: Any) -> str:
    """The config as YAML (written into each output folder as config.yaml)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
