import numpy as np
import pytest

from net.graph import (NTU_CENTER, NTU_EDGES, NW_UCLA_CENTER, NW_UCLA_EDGES, Graph,
                       hop_distance)


@pytest.fixture(scope='module')
def ntu():
    return Graph('ntu-rgb+d', 'spatial')


def test_ntu_spatial_shape_dtype(ntu):
    assert ntu.A.shape == (3, 25, 25)
    assert ntu.A.dtype == np.float32
    assert ntu.center == NTU_CENTER == 20


def test_ntu_spatial_nonzero_counts(ntu):
    # the inf == inf "root" quirk puts most hop-1 edges into A[1]
    assert [int((a != 0).sum()) for a in ntu.A] == [25, 40, 8]


def test_ntu_spatial_further_entries(ntu):
    expected = {(2, 1), (3, 4), (5, 6), (9, 10), (21, 2), (21, 3), (21, 5), (21, 9)}  # 1-based
    got = {(int(r) + 1, int(c) + 1) for r, c in np.argwhere(ntu.A[2])}
    assert got == expected


def test_ntu_spatial_column_sums(ntu):
    np.testing.assert_allclose(ntu.A.sum(axis=(0, 1)), np.ones(25), atol=1e-6)


def test_ntu_spatial_example_values(ntu):
    A = ntu.A
    assert A[0][20, 20] == pytest.approx(0.2)   # 1-based (21, 21)
    assert A[0][3, 3] == pytest.approx(0.5)     # (4, 4)
    assert A[1][1, 20] == pytest.approx(0.2)    # (2, 21)
    assert A[1][0, 12] == pytest.approx(1 / 3, abs=1e-6)  # (1, 13)


@pytest.mark.parametrize('layout', ['ntu-rgb+d', 'nw-ucla'])
@pytest.mark.parametrize('strategy,k', [('uniform', 1), ('distance', 2), ('spatial', 3)])
def test_strategies_column_normalised(layout, strategy, k):
    g = Graph(layout, strategy)
    v = 25 if layout == 'ntu-rgb+d' else 20
    assert g.A.shape == (k, v, v)
    assert g.A.dtype == np.float32
    np.testing.assert_allclose(g.A.sum(axis=(0, 1)), np.ones(v), atol=1e-6)


def test_max_hop_2_partitions():
    assert Graph(max_hop=2).A.shape == (5, 25, 25)
    assert Graph(strategy='distance', max_hop=2).A.shape == (3, 25, 25)


def test_nw_ucla_graph():
    g = Graph('nw-ucla', 'spatial')
    assert g.center == NW_UCLA_CENTER == 2
    assert len(NW_UCLA_EDGES) == 19
    # shoulder centre (2) gathers from spine (1), head (3), both shoulders (4, 8) and itself
    assert set(np.nonzero(g.A.sum(0)[:, 2])[0]) == {1, 2, 3, 4, 8}
    # messages from the centre to its neighbours are "further" (A[2])
    assert all(g.A[2][2, j] > 0 for j in (1, 3, 4, 8))


@pytest.mark.parametrize('edges,v', [(NTU_EDGES, 25), (NW_UCLA_EDGES, 20)])
def test_edge_lists_form_a_tree(edges, v):
    assert len(edges) == v - 1
    assert np.isfinite(hop_distance(v, edges, max_hop=v)).all()


def test_hop_distance_is_inf_beyond_max_hop():
    d = hop_distance(25, NTU_EDGES, max_hop=1)
    assert d[0, 0] == 0 and d[0, 1] == 1 and np.isinf(d[0, 2])


def test_unknown_layout_and_strategy():
    with pytest.raises(ValueError, match='nw-ucla'):
        Graph(layout='openpose')
    with pytest.raises(ValueError, match='spatial'):
        Graph(strategy='agcn')
