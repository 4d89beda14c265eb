"""Skeleton graphs and ST-GCN adjacency partitions.

Reproduces the reference ST-GCN ``Graph`` exactly (reference spec 3.1), including the way the
"spatial" partition treats two joints that are both farther than ``max_hop`` from the centre:
their hop distances are both infinite, ``inf == inf`` holds, and the edge lands in the "root"
part. Checkpoints store ``A``, so the values must match bit for bit after the float32 cast.
"""
import numpy as np

from feeder.layouts import BUILTIN, NTU, NTU_EDGES_1BASED, NW_UCLA, get_layout  # noqa: F401
from torchlight.config import ConfigError

# The built-in layouts' graphs (feeder/layouts.py holds them; a layout file declares your own).
NTU_EDGES = BUILTIN[NTU].edges
NTU_NUM_NODE = BUILTIN[NTU].num_joints
NTU_CENTER = BUILTIN[NTU].center  # spine (joint 21, 1-based)
NW_UCLA_EDGES = BUILTIN[NW_UCLA].edges
NW_UCLA_NUM_NODE = BUILTIN[NW_UCLA].num_joints
NW_UCLA_CENTER = BUILTIN[NW_UCLA].center  # shoulder centre
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
        """layout: a built-in name or a layout file (feeder/layouts.py)."""
        skeleton = get_layout(layout)
        if strategy not in STRATEGIES:
            raise ConfigError(f'model_args.graph_args.strategy: unknown graph strategy {strategy!r}; valid: {list(STRATEGIES)}')
        if int(max_hop) < 0 or int(dilation) < 1:
            raise ConfigError(f'model_args.graph_args: max_hop must be >= 0 and dilation >= 1, got {max_hop} and {dilation}')
        self.layout, self.strategy = layout, strategy
        self.max_hop, self.dilation = max_hop, dilation
        self.num_node, self.edges, self.center = skeleton.num_joints, skeleton.edges, skeleton.center
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
    skeleton = get_layout(layout)
    if labeling_mode not in AGCN_LABELINGS:
        raise ConfigError(f'model_args.graph_args.labeling_mode: unknown AGCN labeling_mode {labeling_mode!r}; valid: {list(AGCN_LABELINGS)}')
    num_node, inward = skeleton.num_joints, skeleton.edges
    outward = [(j, i) for i, j in inward]
    parts = (np.eye(num_node), normalize_digraph(edge_matrix(inward, num_node)),
             normalize_digraph(edge_matrix(outward, num_node)))
    return np.stack(parts).astype(np.float32)
