"""Action class names for predictions, confusion matrices and plots.

`class_names` (a task option) is a built-in list (`ntu60`, `ntu120`, `pkummd`, `nw-ucla`,
`demo`: the files in config/classes/) or a text file with one name per line, in label order.
Without it, `classes.txt` or the `classes` list of `meta.json` beside the label file is used
(the converters and the demo generator write them), else 'class 0', 'class 1', ...
"""
import json
import os

from torchlight.config import ConfigError

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config', 'classes')


def builtin_lists():
    return sorted(os.path.splitext(f)[0] for f in os.listdir(BUILTIN_DIR) if f.endswith('.txt'))


def read_names_file(path):
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def load_class_names(spec=None, num_class=None, label_path=None):
    """The list of class names (at least `num_class` long when given)."""
    if spec:
        path = os.path.join(BUILTIN_DIR, spec + '.txt') if os.sep not in spec and \
            not os.path.isfile(spec) else spec
        if not os.path.isfile(path):
            raise ConfigError(f"class_names: {spec!r} is neither a file nor a built-in list "
                              f"({', '.join(builtin_lists())})")
        names = read_names_file(path)
        if num_class is not None and len(names) < num_class:
            raise ConfigError(f'class_names {path}: {len(names)} names for {num_class} classes')
        return names
    folder = os.path.dirname(os.path.abspath(label_path)) if label_path else None
    if folder and os.path.isfile(os.path.join(folder, 'classes.txt')):
        names = read_names_file(os.path.join(folder, 'classes.txt'))
        if num_class is None or len(names) >= num_class:
            return names
    if folder and os.path.isfile(os.path.join(folder, 'meta.json')):
        try:
            with open(os.path.join(folder, 'meta.json')) as f:
                names = json.load(f).get('classes') or []
        except (ValueError, OSError, AttributeError):
            names = []
        if names and (num_class is None or len(names) >= num_class):
            return [str(n) for n in names]
    return [f'class {c}' for c in range(num_class or 0)]
