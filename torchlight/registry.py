"""Name -> class registries for tasks, methods (models), encoders and feeders.

Original AimCLR/ASAR YAML files refer to classes by dotted import strings
(``net.aimclr.AimCLR``, ``feeder.ntu_feeder.Feeder_triple``); these are registered as
aliases so such files run unchanged, without importing arbitrary user strings.
"""
import difflib
import importlib
import pkgutil

# Packages whose modules register classes by decorator. Every module in them is imported on
# first lookup, so adding a method, encoder or task is adding one file (no central list).
_PLUGIN_PACKAGES = ('feeder', 'net', 'processor')
_loaded = False


def load_plugins():
    """Import every module of the plugin packages (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in _PLUGIN_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f'{package_name}.{info.name}')


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
