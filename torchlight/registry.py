"""Name -> class registries for tasks, methods (models), encoders and feeders.

Original AimCLR/ASAR YAML files refer to classes by dotted import strings
(``net.aimclr.AimCLR``, ``feeder.ntu_feeder.Feeder_triple``); these are registered as
aliases so such files run unchanged, without importing arbitrary user strings.
"""
import difflib
import importlib

# Modules whose import registers classes. Importing them lazily keeps `main.py --help` fast
# and avoids import cycles between the registry and the registered modules.
_PLUGIN_MODULES = (
    'feeder.array_feeder',
    'net.st_gcn',
    'net.skeletonclr',
    'net.aimclr',
    'net.asar',
    'processor.pretrain',
    'processor.evaluation',
    'processor.knn_retrieval',
    'processor.extract_features',
)
_loaded = False


def load_plugins():
    """Import every module that registers classes (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only tolerate modules of this project that do not exist yet; a missing
            # dependency inside an existing module must surface.
            if err.name != name:
                raise


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._entries = {}   # canonical name -> object
        self._aliases = {}   # alias -> canonical name

    def register(self, name, aliases=()):
        def decorator(obj):
            for key in (name, *aliases):
                if key in self._aliases and self._entries[self._aliases[key]] is not obj:
                    raise KeyError(f'{self.kind} {key!r} is already registered')
                self._aliases[key] = name
            self._entries[name] = obj
            return obj
        return decorator

    def names(self):
        return sorted(self._entries)

    def get(self, name):
        load_plugins()
        if name not in self._aliases:
            choices = difflib.get_close_matches(str(name), list(self._aliases), n=3)
            hint = f'; did you mean {", ".join(choices)}?' if choices else ''
            raise KeyError(f'unknown {self.kind} {name!r}{hint} '
                           f'(registered: {", ".join(self.names())})')
        return self._entries[self._aliases[name]]

    def canonical(self, name):
        self.get(name)
        return self._aliases[name]

    def __contains__(self, name):
        load_plugins()
        return name in self._aliases

    def items(self):
        load_plugins()
        return sorted(self._entries.items())


TASKS = Registry('task')
MODELS = Registry('model')
ENCODERS = Registry('encoder')
FEEDERS = Registry('feeder')
