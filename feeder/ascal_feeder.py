"""AS-CAL data handling (reference doc 5.1): st-gcn NTU arrays, raw camera coordinates.

Every clip is cut to its first `selected_frames` frames (NTU 150, UWA3D / N-UCLA 60, SBU 40;
no resizing, zero padding kept) and, when `subtract_joint` is set, centred on that joint in
every frame and for each person (the reference downstream transform 'subtract1': joint 1,
middle of the spine). Both are deterministic, so they run here; the random pretraining
transforms (`aug1`, `aug2`, `list_args`) are applied batched on the device by the 'ascal1' /
'ascal2' views (feeder/ascal_augment.py). Person slots beyond the first two are dropped, as the
reference loader does.
"""
import inspect

from feeder.array_feeder import DataError, SkeletonArrayDataset
from torchlight.registry import FEEDERS

MAX_PERSONS = 2


@FEEDERS.register('ascal_array', aliases=['feeders.skeleton_feeder.Feeder'])
class ASCALArrayDataset(SkeletonArrayDataset):
    def __init__(self, data_path, label_path=None, selected_frames=150, subtract_joint=None,
                 aug1=None, aug2=None, list_args=None, **kwargs):
        super().__init__(data_path, label_path, **kwargs)
        frames, joints = self.data.shape[2], self.data.shape[3]
        if not 0 < int(selected_frames):
            raise DataError(f'selected_frames must be positive, got {selected_frames}')
        if subtract_joint is not None and not 0 <= int(subtract_joint) < joints:
            raise DataError(f'subtract_joint {subtract_joint} is outside 0..{joints - 1} ({data_path})')
        # the reference slices [0, F) without padding: shorter arrays give shorter clips
        self.selected_frames = min(int(selected_frames), frames)
        self.subtract_joint = None if subtract_joint is None else int(subtract_joint)
        given = dict(aug1=aug1, aug2=aug2, list_args=list_args)
        self.view_args.update({k: v for k, v in given.items() if v is not None})

    @property
    def shape(self):
        n, c, _, v, m = super().shape
        return n, c, self.selected_frames, v, min(m, MAX_PERSONS)

    def __getitem__(self, item):
        clip, *rest = super().__getitem__(item)
        clip = clip[:, :self.selected_frames, :, :MAX_PERSONS]
        if self.subtract_joint is not None:
            j = self.subtract_joint
            clip = clip - clip[:, :, j:j + 1]
        return (clip.contiguous(), *rest)


# the parent's named arguments too, so configs are checked key by key
_own = [p for p in inspect.signature(ASCALArrayDataset.__init__).parameters.values()
        if p.kind is not p.VAR_KEYWORD]
_names = {p.name for p in _own}
ASCALArrayDataset.__init__.__signature__ = inspect.signature(ASCALArrayDataset.__init__).replace(
    parameters=_own + [p for p in inspect.signature(SkeletonArrayDataset.__init__).parameters.values()
                       if p.name not in _names])
