"""AimCLR: extreme views, energy-based attention drop (EADM), D3M and nearest-neighbour mining
(reference doc 3.5).

One step on (x_e, x_q, x_k) = (extreme, normal, normal):
    q = f_q(x_q);  q_e, q_ed = f_q(x_e, drop=True);  k = f_k(x_k)      (all L2-normalised)
    l, l_e, l_ed = [q.k, q.Queue]/T, [q_e.k, q_e.Queue]/T, [q_ed.k, q_ed.Queue]/T
    p = softmax(l) (no gradient)
    L_D3M = (CE_soft(p, l_e) + CE_soft(p, l_ed)) / 2,  CE_soft(p, l) = -mean_i sum_j p_ij log_softmax(l)_ij
    epoch <= mining_epoch:  L = CE(l, 0) + L_D3M                        ('loss_nce')
    epoch >  mining_epoch:  L = L_NNM + L_D3M                           ('loss_nnm')
        L_NNM = mean_i [-sum_j M_ij log_softmax(l_i)_j / sum_j M_ij], M = [1, union of the
        top-k queue entries of q, q_e and q_ed]
Only the normal key k enters the queue. Epochs are 1-based.
"""
import torch
import torch.nn.functional as F

from net.moco import MoCo
from net.skeletonclr import FINETUNE_BEHAVIOURS, top1_positive
from torchlight.config import ConfigError
from torchlight.registry import MODELS


def soft_cross_entropy(target, logits):
    """-mean_i sum_j target_ij log_softmax(logits)_ij (= KL(target||r) + H(target) per row)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def d3m_loss(logits, logits_e, logits_ed):
    """Dual distributional divergence minimisation: the normal view's distribution over
    (positive, queue), detached, is the target of the extreme and the dropped-extreme views."""
    p = F.softmax(logits.detach(), dim=1)
    return 0.5 * (soft_cross_entropy(p, logits_e) + soft_cross_entropy(p, logits_ed))


@torch.no_grad()
def neighbour_mask(similarities, topk):
    """Positive mask (N, 1 + K): column 0 (the key) plus, for every (N, K) similarity matrix in
    `similarities` (query . queue of each view), its top-k queue columns (union over views)."""
    first = similarities[0]
    mask = torch.zeros(first.shape[0], 1 + first.shape[1], dtype=first.dtype, device=first.device)
    mask[:, 0] = 1
    for sim in similarities:
        index = sim.topk(min(topk, sim.shape[1]), dim=1).indices
        mask[:, 1:].scatter_(1, index, 1.0)
    return mask


def masked_infonce(logits, mask):
    """mean_i [-sum_j M_ij log_softmax(l_i)_j / sum_j M_ij] (InfoNCE when M = [1, 0, ..., 0])."""
    log_p = F.log_softmax(logits, dim=1)
    return (-(mask * log_p).sum(dim=1) / mask.sum(dim=1)).mean()


@MODELS.register('aimclr', aliases=['net.aimclr.AimCLR'])
class AimCLR(MoCo):
    """MoCo with an extreme view, EADM drop branch, D3M and nearest-neighbour mining.

    `mining_epoch`: neighbours are mined for epochs > mining_epoch (1-based; reference 150).
    `topk`: queue neighbours mined per view (reference 1).
    `eadm`: 'fixed' (the drop of the released source, default) or 'off' (identity, what the
    paper-era bytecode effectively ran); it is passed to the encoder.
    """

    views = ('extreme', 'normal', 'normal')
    # `behaviour: reference` = the code that produced the published numbers: EADM drop as an
    # identity, unnormalised blur kernel, extreme ops tested in the fixed order 1 -> 6, key
    # encoder initialised independently; `fixed` = our corrections (docs/METHODS.md).
    behaviours = {
        'pretrain': {
            'reference': {'model_args.eadm': 'off', 'model_args.key_init': 'reference',
                          'train_feeder_args.blur_normalized': False, 'train_feeder_args.aug_order': 'reference'},
            'fixed': {'model_args.eadm': 'fixed', 'model_args.key_init': 'copy',
                      'train_feeder_args.blur_normalized': True, 'train_feeder_args.aug_order': 'written'}},
        'finetune': FINETUNE_BEHAVIOURS}

    def __init__(self, base_encoder='net.st_gcn.Model', pretrain=True, feature_dim=128,
                 queue_size=32768, momentum=0.999, Temperature=0.07, mlp=True, num_class=60,
                 key_init='copy', init_weights=True, mining_epoch=150, topk=1, eadm='fixed',
                 **encoder_args):
        # MoCo's arguments are spelled out so that model_args are checked by name
        super().__init__(base_encoder=base_encoder, pretrain=pretrain, feature_dim=feature_dim,
                         queue_size=queue_size, momentum=momentum, Temperature=Temperature, mlp=mlp,
                         num_class=num_class, key_init=key_init, init_weights=init_weights,
                         eadm=eadm, **encoder_args)
        if int(topk) < 1:
            raise ConfigError(f'model_args.topk must be >= 1, got {topk}')
        self.mining_epoch = int(mining_epoch)
        self.topk = int(topk)

    def mining(self, epoch):
        return epoch > self.mining_epoch

    def contrast(self, views, epoch):
        x_e, x_q, x_k = views
        q = self.query(x_q)
        q_e, q_ed = self.encoder_q(x_e, drop=True)
        q_e, q_ed = F.normalize(q_e, dim=1), F.normalize(q_ed, dim=1)
        k = self.key(x_k)
        queue = self.queue.clone()   # read before this step's keys are written
        logits = self.logits(q, k, queue)
        logits_e = self.logits(q_e, k, queue)
        logits_ed = self.logits(q_ed, k, queue)
        loss_d3m = d3m_loss(logits, logits_e, logits_ed)
        out = {}
        if self.mining(epoch):
            # queue similarities are columns 1: of the logits (the 1/T scale keeps the order)
            mask = neighbour_mask([l[:, 1:].detach() for l in (logits, logits_e, logits_ed)], self.topk)
            out['loss_nnm'] = masked_infonce(logits, mask)
            out['mined_positives'] = mask[:, 1:].sum(dim=1).mean()
            main = out['loss_nnm']
        else:
            target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
            out['loss_nce'] = F.cross_entropy(logits, target)
            main = out['loss_nce']
        self.enqueue(k)
        out.update(loss=main + loss_d3m, loss_d3m=loss_d3m, pos_top1=top1_positive(logits.detach()))
        return {'loss': out.pop('loss'), **out}
