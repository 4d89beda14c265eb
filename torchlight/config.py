"""Configuration: built-in defaults < YAML file < command line, validated and typed.

Every task declares its options as ``{name: Opt(default, type, help)}``. A YAML file may set any
declared option (unknown keys are an error that names the key and suggests close matches).
Command-line overrides use ``--key value``; nested keys use dots
(``--model_args.queue_size 1024``); several values make a list (``--device 0 1``); a value is
read as a YAML scalar (``--step "[250, 280]"``, ``--nesterov false``). Dict options
(``model_args``, ``*_feeder_args``) merge key by key, so a command-line entry overrides one YAML
key, not the whole dict. No user string is ever evaluated as code.
"""
import copy
import difflib
import inspect
import re

import yaml

_FLOAT_RE = re.compile(r'^[+-]?((\d+\.?\d*)|(\.\d+))([eE][+-]?\d+)?$')
_TRUE = {'yes', 'true', 't', 'y', '1', 'on'}
_FALSE = {'no', 'false', 'f', 'n', '0', 'off'}


class ConfigError(ValueError):
    """A bad configuration value or key; main.py turns it into exit code 2."""


class Opt:
    """One declared option: default value, element type and a one-line help."""

    def __init__(self, default, kind=None, help=''):
        self.default = default
        self.type = kind if kind is not None else (type(default) if default is not None else str)
        self.help = help


def parse_scalar(text):
    """A command-line word as YAML would read it, with '1e-4' read as a float (YAML 1.1 does not)."""
    if not isinstance(text, str):
        return text
    if _FLOAT_RE.match(text.strip()) and not re.match(r'^[+-]?\d+$', text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def coerce(value, kind, key):
    """Convert `value` to the declared kind, or raise ConfigError naming `key`."""
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            word = str(value).strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            raise ValueError
        if kind is int:
            number = parse_scalar(value) if isinstance(value, str) else value
            if isinstance(number, bool):
                raise ValueError
            if isinstance(number, float):
                if number != int(number) and number < 1e15:
                    raise ValueError
                return int(number)  # e.g. mining_epoch: 1e6 in reference files
            return int(number)
        if kind is float:
            number = parse_scalar(value) if isinstance(value, str) else value
            if isinstance(number, bool):
                raise ValueError
            return float(number)
        if kind is str:
            return str(value)
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return normalize_free_dict(value)
        if kind is list or (isinstance(kind, tuple) and kind[0] is list):
            element = kind[1] if isinstance(kind, tuple) else None
            items = value if isinstance(value, (list, tuple)) else [value]
            return [coerce(v, element, key) if element else normalize_free_value(v) for v in items]
        if callable(kind):
            return kind(value)
    except (TypeError, ValueError):
        pass
    name = getattr(kind, '__name__', None) or f'list of {kind[1].__name__}'
    raise ConfigError(f'option {key!r}: cannot read {value!r} as {name}')


_EXPONENT_RE = re.compile(r'^[+-]?((\d+\.?\d*)|(\.\d+))[eE][+-]?\d+$')


def normalize_free_value(value):
    """Values inside free-form dicts: exponent literals that YAML 1.1 leaves as strings
    ('1e-4') become floats; every other string stays as written (aug_method: '123456')."""
    if isinstance(value, str):
        return float(value) if _EXPONENT_RE.match(value.strip()) else value
    if isinstance(value, dict):
        return normalize_free_dict(value)
    if isinstance(value, list):
        return [normalize_free_value(v) for v in value]
    return value


def normalize_free_dict(d):
    return {str(k): normalize_free_value(v) for k, v in d.items()}


def suggest(key, candidates):
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    return f' (did you mean: {", ".join(close)}?)' if close else ''


def parse_overrides(argv):
    """['--a.b', '1', '--c', 'x', 'y', '--flag'] -> {'a.b': 1, 'c': ['x', 'y'], 'flag': True}."""
    overrides, key, values = {}, None, []

    def flush():
        if key is not None:
            overrides[key] = True if not values else (values[0] if len(values) == 1 else values)

    for word in argv:
        if word.startswith('--') and len(word) > 2 and not _FLOAT_RE.match(word[2:]):
            flush()
            key, values = word[2:], []
            if '=' in key:
                key, value = key.split('=', 1)
                values.append(parse_scalar(value))
        elif word in ('-c', '-w'):
            flush()
            key, values = {'-c': 'config', '-w': 'work_dir'}[word], []
        elif key is None:
            raise ConfigError(f'unexpected argument {word!r}: options look like --key value')
        else:
            values.append(parse_scalar(word))
    flush()
    return overrides


def load_yaml(path):
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f'config file not found: {path}') from None
    except yaml.YAMLError as err:
        raise ConfigError(f'config file {path} is not valid YAML: {err}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of options, got {type(data).__name__}')
    return data


BEHAVIOURS = ('reference', 'fixed')


def build_config(options, argv, presets=None):
    """Merge defaults < YAML (from --config) < command line into a typed dict.

    `options`: {name: Opt}. `presets(choice, cfg)`: the option values {dotted key: value} that
    `behaviour: choice` stands for, given the merged config (e.g. its model). A layer (YAML
    file or command line) that sets `behaviour` gets that preset applied just before its own
    keys, so keys written next to it, or on a later layer, win, and `--behaviour` on the
    command line overrides the compat keys of the file.
    """
    cli = parse_overrides(argv)
    config_path = cli.pop('config', None)
    sources = [(load_yaml(config_path), f'config file {config_path}')] if config_path else []
    sources.append((cli, 'command line'))
    cfg = _merge(options, sources, config_path)
    if presets is None or not any('behaviour' in layer for layer, _ in sources):
        return cfg
    expanded = []
    for layer, origin in sources:
        if 'behaviour' in layer:
            choice = layer['behaviour']
            if choice not in BEHAVIOURS:
                raise ConfigError(f"option 'behaviour' in {origin} must be one of {', '.join(BEHAVIOURS)}, "
                                  f'got {choice!r}')
            expanded.append((presets(choice, cfg), f'behaviour: {choice} (in {origin})'))
        expanded.append((layer, origin))
    return _merge(options, expanded, config_path)


def _merge(options, sources, config_path):
    cfg = {name: copy.deepcopy(opt.default) for name, opt in options.items()}
    if config_path and 'config' in options:
        cfg['config'] = config_path
    for layer, origin in sources:
        for dotted, value in layer.items():
            _set(cfg, options, dotted, value, origin)
    return cfg


def _set(cfg, options, dotted, value, origin):
    top, *rest = dotted.split('.')
    if top not in options:
        raise ConfigError(f'unknown option {top!r} in {origin}{suggest(top, options)}')
    opt = options[top]
    if not rest:
        if opt.type is dict and isinstance(cfg[top], dict) and isinstance(value, dict):
            merged = dict(cfg[top])
            merged.update(coerce(value, dict, top))   # key-wise merge, as the reference does
            cfg[top] = merged
        else:
            cfg[top] = coerce(value, opt.type, top)
        return
    if opt.type is not dict:
        raise ConfigError(f'option {top!r} in {origin} has no sub-keys (got {dotted!r})')
    node = cfg[top] if cfg[top] is not None else {}
    cfg[top] = node
    for part in rest[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f'{dotted!r} in {origin}: {part!r} is not a mapping')
    node[rest[-1]] = normalize_free_value(value)


def check_kwargs(kwargs, where, *callables):
    """Raise ConfigError for keys of `kwargs` that none of `callables` accepts by name, and for a
    word given where the accepting signature's default is a number.

    Classes whose constructor takes **kwargs are ignored for this check only when they are the
    only target, so explicit signatures still catch typos.
    """
    accepted, defaults = set(), {}
    for fn in callables:
        for p in inspect.signature(fn).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                accepted.add(p.name)
                if p.default is not p.empty:
                    defaults.setdefault(p.name, p.default)
    for key, value in kwargs.items():
        if key not in accepted:
            raise ConfigError(f'unknown key {key!r} in {where}{suggest(key, accepted)} '
                              f'(accepted: {", ".join(sorted(accepted))})')
        # a word where the signature's default is a number would fail later inside int()/float()
        default = defaults.get(key)
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                float(value)
            except ValueError:
                raise ConfigError(f'{where}.{key}: cannot read {value!r} as a number '
                                  f'(the default is {default!r})') from None


def dump(cfg, path, header=''):
    with open(path, 'w') as f:
        if header:
            f.write(f'# {header}\n')
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None)
