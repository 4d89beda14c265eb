"""What every evaluation task writes at its end: a confusion matrix (PNG, rows normalised) and a
per-class accuracy table (results.json and the log)."""
import os

import numpy as np


def confusion_matrix(labels, predictions, num_class):
    """counts[i, j] = test clips of true class i predicted as class j."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_class + predictions, minlength=num_class * num_class).reshape(num_class, num_class)


def per_class_table(counts, class_names):
    """[{class, name, clips, correct, accuracy}] in label order (accuracy None for absent classes)."""
    rows = []
    for c in range(len(counts)):
        clips = int(counts[c].sum())
        rows.append({'class': c, 'name': class_names[c], 'clips': clips, 'correct': int(counts[c, c]),
                     'accuracy': round(float(counts[c, c]) / clips, 6) if clips else None})
    return rows


def log_table(log, rows, title):
    log(f'{title}: per-class top-1 (class, clips, accuracy)')
    width = min(40, max(len(r['name']) for r in rows))
    for r in rows:
        acc = '  n/a' if r['accuracy'] is None else f"{100 * r['accuracy']:6.2f}%"
        log(f"  {r['class']:4d} {short(r['name'], width):<{width}} {r['clips']:6d} {acc}")


def short(name, width):
    return name if len(name) <= width else name[:width - 1] + '…'


def plot_confusion(counts, class_names, path, title):
    """Row-normalised matrix as a PNG sized so that 120 class names stay readable."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    k = len(counts)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    cell = 0.13 if k > 30 else 0.45                       # inches per class
    font = 5 if k > 60 else 6 if k > 30 else 8
    labels = [f'{c} {short(n, 32)}' for c, n in enumerate(class_names[:k])]
    margin = 0.3 + 0.055 * font * max(len(s) for s in labels) / 6   # room for the longest label
    side = max(4.0, cell * k)
    fig, ax = plt.subplots(figsize=(side + margin + 1.6, side + margin + 0.8))
    image = ax.imshow(norm, cmap='Blues', vmin=0, vmax=1, interpolation='nearest')
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=90, fontsize=font)
    ax.set_yticklabels(labels, fontsize=font)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title, fontsize=9)
    if k <= 20:   # the values themselves fit into the cells
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f'{norm[i, j]:.2f}', ha='center', va='center', fontsize=7,
                            color='white' if norm[i, j] > 0.5 else 'black')
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label='fraction of the true class')
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=150)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


def write_report(proc, labels, predictions, num_class, class_names, name, title):
    """Confusion matrix PNG `<work_dir>/<name>.png`, per-class table in the log; returns the
    table and the counts (for results.json)."""
    counts = confusion_matrix(labels, predictions, num_class)
    rows = per_class_table(counts, class_names)
    log_table(proc.log, rows, title)
    if proc.is_main:
        path = os.path.join(proc.work_dir, name + '.png')
        plot_confusion(counts, class_names, path, f'{title}: {len(labels)} test clips, '
                                                   f'top-1 {100 * np.trace(counts) / max(1, len(labels)):.2f}%')
        proc.log(f'Confusion matrix: {path}')
    return rows, counts
