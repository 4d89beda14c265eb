"""Skeleton graphs and ST-GCN adjacency partitions.

Reproduces the reference ST-GCN ``Graph`` exactly (reference spec 3.1), including the way the
"spatial" partition treats two joints that are both farther than ``max_hop`` from the centre:
their hop distances are both infinite, ``inf == inf`` holds, and the edge lands in the "root"
part. Checkpoints store ``A``, so the values must match bit for bit after the float32 cast.
"""
import numpy as np

# 1-based (joint, joint) bones of the NTU RGB+D 25-joint Kinect v2 skeleton, reference order.
NTU_EDGES_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
)
NTU_EDGES = tuple((i - 1, j - 1) for i, j in NTU_EDGES_1BASED)
NTU_NUM_NODE = 25
NTU_CENTER = 20  # spine (joint 21, 1-based)

# 0-based (child, parent) bones of the NW-UCLA 20-joint Kinect v1 skeleton.
NW_UCLA_EDGES = (
    (1, 0), (2, 1), (3, 2), (4, 2), (5, 4), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9),
    (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18),
)
NW_UCLA_NUM_NODE = 20
NW_UCLA_CENTER = 2  # shoulder centre

LAYOUTS = {
    'ntu-rgb+d': (NTU_NUM_NODE, NTU_EDGES, NTU_CENTER),
    'nw-ucla': (NW_UCLA_NUM_NODE, NW_UCLA_EDGES, NW_UCLA_CENTER),
}
STRATEGIES = ('uniform', 'distance', 'spatial')


def hop_distance(num_node, edges, max_hop=1):
    """Hop distance matrix; pairs farther than ``max_hop`` stay at ``inf`` (as in the reference)."""
    adj = np.zeros((num_node, num_node))
    for i, j in edges:
        adj[i, j] = adj[j, i] = 1
    dist = np.full((num_node, num_node), np.inf)
    reach = np.stack([np.linalg.matrix_power(adj, d) for d in range(max_hop + 1)]) > 0
    for d in range(max_hop, -1, -1):  # smallest reaching power wins
        dist[reach[d]] = d
    return dist


def normalize_digraph(adj):
    """Column-normalise: A @ diag(1 / column sums); empty columns stay zero."""
    col = adj.sum(0)
    inv = np.zeros_like(col)
    inv[col > 0] = 1.0 / col[col > 0]
    return adj @ np.diag(inv)


class Graph:
    """Adjacency partitions for ST-GCN.

    ``A`` is float32 of shape (K, V, V) where ``A[k][v, w]`` weights the message from joint v to
    joint w. K is 1 (uniform), len(valid hops) (distance) or 2*hops+1 (spatial).
    """

    def __init__(self, layout='ntu-rgb+d', strategy='spatial', max_hop=1, dilation=1):
        if layout not in LAYOUTS:
            raise ValueError(f'unknown graph layout {layout!r}; valid: {sorted(LAYOUTS)}')
        if strategy not in STRATEGIES:
            raise ValueError(f'unknown graph strategy {strategy!r}; valid: {list(STRATEGIES)}')
        self.layout, self.strategy = layout, strategy
        self.max_hop, self.dilation = max_hop, dilation
        self.num_node, self.edges, self.center = LAYOUTS[layout]
        self_links = [(i, i) for i in range(self.num_node)]
        self.edge = self_links + list(self.edges)
        self.hop_dis = hop_distance(self.num_node, self.edge, max_hop)
        self.A = self._partition(strategy).astype(np.float32)

    def __str__(self):
        return f'Graph({self.layout}, {self.strategy}, K={self.A.shape[0]}, V={self.num_node})'

    def _partition(self, strategy):
        valid_hop = range(0, self.max_hop + 1, self.dilation)
        adj = np.zeros((self.num_node, self.num_node))
        for hop in valid_hop:
            adj[self.hop_dis == hop] = 1
        norm = normalize_digraph(adj)

        if strategy == 'uniform':
            return norm[None]
        if strategy == 'distance':
            A = np.zeros((len(valid_hop), self.num_node, self.num_node))
            for k, hop in enumerate(valid_hop):
                A[k][self.hop_dis == hop] = norm[self.hop_dis == hop]
            return A
        # spatial: split each hop by distance to the centre (source j vs target i)
        to_center = self.hop_dis[:, self.center]
        parts = []
        for hop in valid_hop:
            on_hop = self.hop_dis == hop                    # [j, i]
            d_src, d_dst = to_center[:, None], to_center[None, :]
            root = np.where(on_hop & (d_src == d_dst), norm, 0.0)   # inf == inf -> root
            close = np.where(on_hop & (d_src > d_dst), norm, 0.0)
            further = np.where(on_hop & (d_src < d_dst), norm, 0.0)
            if hop == 0:
                parts.append(root)
            else:
                parts.append(root + close)
                parts.append(further)
        return np.stack(parts)


AGCN_LABELINGS = ('spatial',)


def edge_matrix(edges, num_node):
    """A[j, i] = 1 for every edge (i, j): the message goes from joint i to joint j."""
    adj = np.zeros((num_node, num_node))
    for i, j in edges:
        adj[j, i] = 1
    return adj


def agcn_adjacency(layout='ntu-rgb+d', labeling_mode='spatial'):
    """The 2s-AGCN / ISC graph (reference doc ISC 3.1): float32 (3, V, V) stack of the self
    links, the column-normalised inward edges (the layout's edge list) and the column-normalised
    outward (reversed) edges. Unlike ST-GCN's ``A`` it is not stored in checkpoints."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown graph layout {layout!r}; valid: {sorted(LAYOUTS)}')
    if labeling_mode not in AGCN_LABELINGS:
        raise ValueError(f'unknown AGCN labeling_mode {labeling_mode!r}; valid: {list(AGCN_LABELINGS)}')
    num_node, inward, _ = LAYOUTS[layout]
    outward = [(j, i) for i, j in inward]
    parts = (np.eye(num_node), normalize_digraph(edge_matrix(inward, num_node)),
             normalize_digraph(edge_matrix(outward, num_node)))
    return np.stack(parts).astype(np.float32)
