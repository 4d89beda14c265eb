"""User-declared skeleton layouts (feeder/layouts.py) in graphs, streams, flips, processors,
the converter and the plots; extract_features without weights."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import main
from feeder import augment, layouts
from feeder.streams import to_stream
from net.graph import Graph, agcn_adjacency
from tests.conftest import ROOT, TINY_ENCODER, write_dataset
from tools import custom_gendata, plot_skeleton, plot_tsne

UTD = os.path.join(ROOT, 'tools', 'resources', 'kinect_v1_utd_layout.yaml')
# UTD-MHAD joint u is NW-UCLA joint UTD_TO_UCLA[u] (head, shoulder centre, spine, hip centre reversed)
UTD_TO_UCLA = [3, 2, 1, 0] + list(range(4, 20))


def test_builtin_layouts_keep_the_reference_tables():
    ntu = layouts.get_layout('ntu-rgb+d')
    assert ntu.num_joints == 25 and ntu.center == 20 and len(ntu.edges) == 24 and len(ntu.bones) == 25
    assert ntu.flip_map == (0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23, 24, 21, 22)
    assert layouts.get_layout(None, 20).name == 'nw-ucla'
    assert [ntu.side(j) for j in (3, 4, 8)] == ['centre', 'left', 'right']


def test_declared_layout_is_the_permuted_builtin():
    utd, ucla = layouts.get_layout(UTD, 20), layouts.get_layout('nw-ucla')
    p = np.array(UTD_TO_UCLA)
    for strategy in ('uniform', 'distance', 'spatial'):
        a, b = Graph(UTD, strategy).A, Graph('nw-ucla', strategy).A
        np.testing.assert_array_equal(a, b[:, p][:, :, p])
    np.testing.assert_array_equal(agcn_adjacency(UTD), agcn_adjacency('nw-ucla')[:, p][:, :, p])
    x = torch.randn(2, 3, 5, 20, 1)
    bones = to_stream(x[:, :, :, p], 'bone', UTD)                          # UTD-ordered clip
    torch.testing.assert_close(bones, to_stream(x, 'bone', 'nw-ucla')[:, :, :, p])
    inverse = np.argsort(p)
    assert [inverse[ucla.flip_map[q]] for q in p] == list(utd.flip_map)   # same joints swapped
    assert augment.draw_spatial_flip(3, torch.Generator().manual_seed(0), UTD).joint_map == utd.flip_map


@pytest.mark.parametrize('content, message', [
    ({'joints': ['a', 'b'], 'edges': [['a', 'b']], 'center': 'a', 'colour': 1}, "unknown keys \\['colour'\\]"),
    ({'joints': ['a', 'b'], 'edges': [['a', 'c']], 'center': 'a'}, "edges: 'c' is not a joint name"),
    ({'joints': ['a', 'b', 'c'], 'edges': [['a', 'b'], ['a', 'c']], 'center': 'a'}, 'child of two bones'),
    ({'joints': ['a', 'b'], 'edges': [['a', 'b']]}, "missing 'center'"),
    ({'joints': ['a', 'b'], 'edges': [['a', 'b']], 'center': 'a', 'flip': [['a', 'a']]}, 'distinct joints'),
])
def test_layout_file_errors_name_file_and_key(tmp_path, content, message):
    import yaml
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(layouts.LayoutError, match=message) as err:
        layouts.get_layout(str(path))
    assert 'bad.yaml' in str(err.value)


def test_layout_joint_count_must_match_the_data():
    with pytest.raises(layouts.LayoutError, match="has V=20 joints, but the data has V=25"):
        layouts.get_layout(UTD, 25)


def test_untrained_features_and_knn_with_a_declared_layout(tmp_path, capsys):
    """extract_features takes a k-NN config and runs without weights; the bone stream and the
    graph use the layout file; a 25-joint input is refused with the file named."""
    train = write_dataset(str(tmp_path), 'train', 8, v=20, m=2)
    val = write_dataset(str(tmp_path), 'val', 4, v=20, m=2)
    config = tmp_path / 'knn.yaml'
    config.write_text(json.dumps({
        'model': 'skeletonclr', 'model_args': {**TINY_ENCODER, 'num_class': 4, 'graph_args': {'layout': UTD}},
        'train_feeder_args': {'data_path': train[0], 'label_path': train[1]},
        'test_feeder_args': {'data_path': val[0], 'label_path': val[1]},
        'knn_k': [1], 'stream': 'bone', 'num_worker': 0, 'use_gpu': False, 'print_log': False}))
    out = tmp_path / 'f.npy'
    assert main.main(['extract_features', '--config', str(config), '--input', val[0], '--output', str(out),
                      '--work_dir', str(tmp_path / 'w')]) == 0
    assert np.load(out).shape == (4, 8)
    assert 'untrained encoder' in (tmp_path / 'w' / 'log.txt').read_text()
    assert main.main(['knn_retrieval', '--config', str(config), '--work_dir', str(tmp_path / 'k')]) == 0
    wrong = write_dataset(str(tmp_path), 'wrong', 4, v=25, m=2)
    assert main.main(['knn_retrieval', '--config', str(config), '--work_dir', str(tmp_path / 'k2'),
                      '--test_feeder_args.data_path', wrong[0], '--test_feeder_args.label_path', wrong[1]]) == 2
    assert 'wrong_data.npy' in capsys.readouterr().err


def test_converter_joint_order_and_layout_file(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'raw'
    folder.mkdir()
    sequences = {f's{i}': rng.normal(size=(6, 20, 3)).astype(np.float32) for i in range(3)}
    for name, seq in sequences.items():
        np.save(folder / f'{name}.npy', seq)
    (tmp_path / 'labels.csv').write_text('name,label\ns0,walk\ns1,sit\ns2,walk\n')
    order = ','.join(str(v) for v in UTD_TO_UCLA)                  # UCLA-ordered files -> UTD order
    custom_gendata.main(['--data_path', str(folder), '--labels', str(tmp_path / 'labels.csv'),
                         '--out_folder', str(tmp_path / 'out'), '--num_joints', '20', '--length', '6',
                         '--layout', UTD, '--joint_order', order, '--quiet'])
    data = np.load(tmp_path / 'out' / 'train_data.npy')              # (N, C, T, V, M)
    np.testing.assert_array_equal(data[0, :, :, :, 0], sequences['s0'][:, UTD_TO_UCLA].transpose(2, 0, 1))
    meta = json.load(open(tmp_path / 'out' / 'meta.json'))
    assert meta['layout'] == 'kinect-v1-utd' and meta['joint_order'] == UTD_TO_UCLA
    assert layouts.get_layout(str(tmp_path / 'out' / 'layout.yaml')) == layouts.get_layout(UTD)
    assert layouts.get_layout(str(tmp_path / 'out' / 'meta.json')).edges == layouts.get_layout(UTD).edges
    assert (tmp_path / 'out' / 'classes.txt').read_text() == 'sit\nwalk\n'
    with pytest.raises(Exception, match='joint_order'):
        custom_gendata.main(['--data_path', str(folder), '--labels', str(tmp_path / 'labels.csv'),
                             '--out_folder', str(tmp_path / 'out2'), '--num_joints', '20',
                             '--joint_order', '0,1,1', '--quiet'])


def test_skeleton_gif_has_one_frame_per_clip_frame_for_20_joints(tmp_path):
    from PIL import Image
    data, label = write_dataset(str(tmp_path), 'val', 2, t=12, v=20, m=2)
    gif = tmp_path / 'clip.gif'
    assert plot_skeleton.main(['--data', data, '--label', label, '--index', '1', '--out', str(gif),
                               '--views', 'raw', 'normal', 'extreme', 'crop_pose', '--input_size', '8',
                               '--layout', UTD]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 12 and image.size[0] > 3 * image.size[1]   # four panels side by side
    png = tmp_path / 'grid.png'
    assert plot_skeleton.main(['--data', data, '--label', label, '--out', str(png)]) == 0   # nw-ucla bones
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="layout 'ntu-rgb\\+d' has V=25 joints, but the data has V=20"):
        plot_skeleton.main(['--data', data, '--label', label, '--out', str(png), '--layout', 'ntu-rgb+d'])


def test_tsne_styles_stay_distinct_beyond_20_classes():
    styles = {plot_tsne.class_style(c, 120) for c in range(120)}
    assert len(styles) == 120
    assert len({plot_tsne.class_style(c, 20)[0] for c in range(20)}) == 20
