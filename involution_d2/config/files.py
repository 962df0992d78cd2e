"""Config files of either Detectron2 config system, for the command-line tools. Typos fail
here, before anything is built: an unknown key names the nearest valid ones, a value of the
wrong type names the type expected."""
import difflib
import inspect
import os

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import add_involution_config
from ..utils.errors import ConfigError

__all__ = ["setup_config", "apply_lazy_overrides"]

LAZY_SUFFIXES = (".py",)
YACS_SUFFIXES = (".yaml", ".yml")


def setup_config(config_file, opts=(), freeze=True):
    """The config (LazyConfig for .py, yacs CfgNode for .yaml) with overrides applied, on
    the CPU when there is no GPU; a yacs config frozen unless ``freeze`` is False."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file}: no such file")
    opts = list(opts)
    if config_file.endswith(LAZY_SUFFIXES):
        cfg = LazyConfig.load(config_file)
        cfg = apply_lazy_overrides(cfg, opts)
        if not torch.cuda.is_available():
            cfg.train.device = "cpu"
        return cfg
    if not config_file.endswith(YACS_SUFFIXES):
        raise ConfigError(
            f"--config-file {config_file}: unknown kind of config file "
            f"({os.path.splitext(config_file)[1] or 'no extension'}); expected a LazyConfig "
            f"{'/'.join(LAZY_SUFFIXES)} or a yacs {'/'.join(YACS_SUFFIXES)} file")
    cfg = get_cfg()
    add_involution_config(cfg)
    _merge_yacs(cfg, lambda: cfg.merge_from_file(config_file), f"{config_file}: ")
    lazy_syntax = any("=" in str(o) for o in opts[::2])
    _merge_yacs(cfg, lambda: cfg.merge_from_list(opts), "override: ",
                " (yacs overrides are KEY VALUE pairs, e.g. SOLVER.MAX_ITER 100; key=value is "
                "LazyConfig syntax, for .py configs)" if lazy_syntax else "")
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg


def _nearest(word, candidates):
    near = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def _yacs_keys(cfg, prefix=""):
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            yield from _yacs_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _merge_yacs(cfg, merge, where, hint=""):
    """Run a yacs merge; its KeyError / ValueError become ConfigErrors that name the key and
    the nearest valid keys."""
    try:
        merge()
    except (KeyError, ValueError, AssertionError) as exc:
        # yacs: KeyError / AssertionError "Non-existent (config) key: SOLVER.MAX_ITERR",
        # ValueError "Type mismatch (<class 'int'> vs. <class 'str'>) with values (250 vs.
        # abc) for config key: SOLVER.MAX_ITER", AssertionError "Override list has odd length"
        message = str(exc.args[0] if exc.args else exc)
        if message.startswith("Non-existent"):
            key = message.rsplit(": ", 1)[-1]
            raise ConfigError(f"{where}{key}: no such config key"
                              f"{_nearest(key, _yacs_keys(cfg))}") from exc
        raise ConfigError(f"{where}{message}{hint}") from exc


def _target_parameters(node):
    """The keyword arguments the ``_target_`` of a LazyCall node accepts: a set, or None
    when it takes any (``**kwargs``) or cannot be inspected."""
    target = node.get("_target_", None) if isinstance(node, DictConfig) else None
    if target is None:
        return set()
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind != p.VAR_POSITIONAL}


def _check_key(cfg, key, text):
    """Raise ConfigError unless ``key`` (dotted) exists in ``cfg`` or is an argument that the
    callable of its LazyCall node accepts."""
    node, parts = cfg, key.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth]) or "the config"
        if isinstance(node, ListConfig):
            if part.isdigit() and int(part) < len(node):
                node = node._get_node(int(part))
                continue
            raise ConfigError(f"override {text}: {parent} is a list of {len(node)} items; "
                              f"{part} is not an index of it")
        if not isinstance(node, DictConfig):
            value = node._value() if hasattr(node, "_value") else node
            raise ConfigError(f"override {text}: {parent} holds the value {value!r}, not a "
                              "config with keys")
        if part in node:
            node = node._get_node(part)
            continue
        accepted = _target_parameters(node)
        if accepted is None or part in accepted:
            return  # a new argument of the node's callable
        valid = sorted(set(node.keys()) - {"_target_"} | accepted)
        raise ConfigError(
            f"override {text}: {parent} has no key {part}{_nearest(part, valid)} (keys of "
            f"{parent}: {', '.join(valid)}; prefix the override with + to add a new key on "
            "purpose)")


def _check_type(cfg, key, value, text):
    """Raise ConfigError when ``value`` cannot stand for the bool / int / float at
    ``key``."""
    current = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if value is None or current is None or isinstance(value, str) and "${" in value:
        return
    if isinstance(current, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(current, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    else:
        return
    if not ok:
        raise ConfigError(f"override {text}: {key} takes {expected}, like its current value "
                          f"{current!r}; got {value!r}")


def apply_lazy_overrides(cfg, overrides):
    """Detectron2's ``LazyConfig.apply_overrides`` that refuses keys which do not exist and
    values of the wrong type, instead of adding them silently (``+key=value`` adds a key on
    purpose)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as exc:
            if text.startswith("--"):
                hint = " (it looks like an option: put options before the overrides)"
            elif "=" not in text and text.upper() == text:
                hint = " (KEY VALUE is yacs syntax, for .yaml configs)"
            else:
                hint = ""
            raise ConfigError(f"override {text!r}: LazyConfig overrides are key=value, e.g. "
                              f"train.max_iter=100{hint}") from exc
        if override.is_delete():
            raise ConfigError(f"override {text!r}: deleting a key is not supported")
        if override.is_add() or override.is_force_add():
            continue
        key = override.key_or_group
        _check_key(cfg, key, text)
        _check_type(cfg, key, override.value(), text)
    return LazyConfig.apply_overrides(cfg, overrides)
