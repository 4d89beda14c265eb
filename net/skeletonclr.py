"""SkeletonCLR: MoCo v2 on two normal views with InfoNCE (reference doc 3.4)."""
import torch
import torch.nn.functional as F

from net.moco import MoCo
from torchlight.registry import MODELS


def top1_positive(logits):
    """Fraction of rows whose positive (column 0) scores highest: a cheap training signal."""
    return (logits.argmax(dim=1) == 0).float().mean()


# The original fine-tuning / semi-supervised processors (AimCLR repository) train with the
# whole model in eval mode: frozen BN statistics, no dropout (reference doc 4.4, 4.5).
FINETUNE_BEHAVIOURS = {'reference': {'bn_mode': 'eval'}, 'fixed': {'bn_mode': 'train'}}


@MODELS.register('skeletonclr', aliases=['net.skeletonclr.SkeletonCLR'])
class SkeletonCLR(MoCo):
    views = ('normal', 'normal')
    # `behaviour: reference | fixed` (processor.base.Processor.behaviour_preset): the reference
    # processor initialises the key encoder independently (its custom init runs after the copy)
    behaviours = {'pretrain': {'reference': {'model_args.key_init': 'reference'},
                               'fixed': {'model_args.key_init': 'copy'}},
                  'finetune': FINETUNE_BEHAVIOURS}

    def contrast(self, views, epoch):
        x_q, x_k = views
        q = self.query(x_q)
        k = self.key(x_k)
        # The queue is read before this step's keys are written (clone keeps autograd's copy intact).
        logits = self.logits(q, k, self.queue.clone())
        loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        self.enqueue(k)
        return {'loss': loss, 'pos_top1': top1_positive(logits.detach())}
