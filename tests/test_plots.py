import os
import pickle

import numpy as np
import pytest

from tools import plot_curves, plot_tsne


def test_tsne_plot(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    feats = rng.normal(size=(30, 8)).astype(np.float32) + labels[:, None] * 3
    np.save(tmp_path / 'f.npy', feats)
    with open(tmp_path / 'l.pkl', 'wb') as f:
        pickle.dump(([str(i) for i in range(30)], labels.tolist()), f)
    plot_tsne.main(['--features', str(tmp_path / 'f.npy'), '--label', str(tmp_path / 'l.pkl'),
                    '--out', str(tmp_path / 't.png')])
    assert (tmp_path / 't.png').stat().st_size > 1000
    with pytest.raises(ValueError, match=r'holds \(30, 8\), expected \(5, D\)'):
        with open(tmp_path / 's.pkl', 'wb') as f:
            pickle.dump((['a'] * 5, [0] * 5), f)
        plot_tsne.main(['--features', str(tmp_path / 'f.npy'), '--label', str(tmp_path / 's.pkl'),
                        '--out', str(tmp_path / 'u.png')])


def test_curves_from_event_files(tmp_path):
    from torchlight.io import summary_writer
    writer = summary_writer(str(tmp_path / 'run' / 'train'))
    for epoch in range(1, 4):
        writer.add_scalar('loss', 1.0 / epoch, epoch)
    writer.close()
    series = plot_curves.read_scalars(str(tmp_path / 'run'))
    assert series['train/loss'] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    plot_curves.main(['--work_dir', str(tmp_path / 'run'), '--out', str(tmp_path / 'c.png')])
    assert os.path.getsize(tmp_path / 'c.png') > 1000
