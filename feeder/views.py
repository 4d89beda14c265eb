"""Turns a raw batch into the views a method asks for (`method.views`), batched on the device."""
import math

from feeder import ascal_augment, augment, composite, crop_resize

VIEW_KINDS = ('raw', 'normal', 'extreme', 'crop_pose', 'crop_resize', 'center_crop', 'ascal1', 'ascal2')
CROP_KINDS = ('crop_pose', 'crop_resize', 'center_crop')


def make_views(x, kinds, gen, view_args, lengths=None):
    """x: (N, C, T, V, M) raw clips on the device; kinds: e.g. ('extreme', 'normal', 'normal');
    gen: CPU torch.Generator for this (seed, epoch, step, rank), or None when every kind is
    deterministic; view_args: the feeder's augmentation keys (shear_amplitude,
    temperal_padding_ratio, aug_method, l_ratio, input_size, ...); lengths: (N,) true frame
    counts for the crop kinds (default: up to the last non-empty frame). The views are drawn
    in the order of `kinds` and depend only on `gen`, not on the device."""
    unknown = [kind for kind in kinds if kind not in VIEW_KINDS]
    if unknown:
        raise ValueError(f'unknown view kind {unknown[0]!r}; expected one of {VIEW_KINDS}')
    if any(kind in CROP_KINDS for kind in kinds):
        lengths = crop_resize.valid_lengths(x) if lengths is None else lengths
        crop_resize.check_lengths(x, lengths)
    rotation = rotation_theta(view_args)
    views, composite_views = [], {}   # normal / extreme: drawn in order, applied together
    for position, kind in enumerate(kinds):
        if kind == 'raw':
            views.append(x)
        elif kind == 'crop_pose':
            views.append(crop_resize.crop_pose_view(
                x, lengths, gen, view_args.get('l_ratio', (0.1, 1.0)), view_args.get('input_size', 64),
                view_args.get('min_crop', crop_resize.MIN_CROP),
                view_args.get('corrupt_joints', crop_resize.CORRUPT_JOINTS)))
        elif kind == 'crop_resize':   # one l_ratio entry: the centre crop (MAMP p_interval [0.95])
            ratio = view_args.get('l_ratio', (0.5, 1.0))
            floor = view_args.get('min_crop', crop_resize.MIN_CROP)
            params = crop_resize.draw_random_crop(lengths, gen, ratio, floor) if len(ratio) == 2 \
                else crop_resize.centre_crop(lengths, ratio[0])
            views.append(crop_resize.apply_crop_resize(x, params, view_args.get('input_size', 64)))
        elif kind == 'center_crop':
            params = crop_resize.centre_crop(lengths, view_args.get('l_ratio', (0.95,))[0])
            views.append(crop_resize.apply_crop_resize(x, params, view_args.get('input_size', 64)))
        elif kind in ('ascal1', 'ascal2'):   # AS-CAL: transform strings aug1 / aug2
            views.append(ascal_augment.ascal_view(
                x, gen, transform=view_args.get('aug' + kind[-1], ascal_augment.DEFAULT_TRANSFORM),
                list_args=view_args.get('list_args', ascal_augment.DEFAULT_LIST_ARGS),
                blur_normalized=view_args.get('blur_normalized', True)))
        else:
            augment.check_xyz(x)
            views.append(None)
            if kind == 'normal':
                composite_views[position] = composite.draw_normal(
                    x.shape, gen, shear_amplitude=view_args.get('shear_amplitude', 0.5),
                    temperal_padding_ratio=view_args.get('temperal_padding_ratio', 6),
                    view_rotation=view_args.get('view_rotation', 0))
            else:   # extreme
                composite_views[position] = composite.draw_extreme(
                    x.shape, gen, shear_amplitude=view_args.get('shear_amplitude', 0.5),
                    temperal_padding_ratio=view_args.get('temperal_padding_ratio', 6),
                    aug_method=view_args.get('aug_method') or '12345',
                    layout=view_args.get('layout'),
                    blur_normalized=view_args.get('blur_normalized', True),
                    aug_order=view_args.get('aug_order', 'written'))
        if rotation and kind in CROP_KINDS:   # MAMP random_rot, after the crop-resize
            views[-1] = augment.apply_channel_matrix(views[-1], augment.draw_random_rot(len(x), gen, rotation))
    if composite_views:
        made = composite.apply_views(x, list(composite_views.values()))
        for position, view in zip(composite_views, made):
            views[position] = view
    return views


def rotation_theta(view_args):
    """The `random_rot` key as a maximum angle in radians: true = 0.3 (MAMP / CTR-GCN), a
    number = that angle, false / absent = 0 (no rotation)."""
    value = view_args.get('random_rot', False)
    return 0.3 if value is True else float(value or 0.0)


def has_augmentation(view_args):
    """True when the evaluation training view is random: a 'normal' view that changes the clip
    (reference: both keys <= 0 disable it, `view_rotation` > 0 adds to it), a random crop
    (`l_ratio` with two entries) or a random rotation (`random_rot`)."""
    return (view_args.get('shear_amplitude', -1) > 0 or view_args.get('temperal_padding_ratio', -1) > 0
            or view_args.get('view_rotation', 0) > 0 or len(view_args.get('l_ratio', ())) == 2
            or rotation_theta(view_args) > 0)


def eval_view(view_args, train):
    """The view kind that evaluation applies to a split's clips: ISC/HiCo data (`l_ratio` set)
    is cropped and resized, a random crop ([low, high]) only when training; otherwise the
    AimCLR 'normal' augmentation when training with augmentation keys, else the raw clip."""
    ratio = view_args.get('l_ratio')
    if rotation_theta(view_args) > 0 and not train:
        raise ValueError('random_rot is a training augmentation; evaluation features need '
                         'deterministic views (remove it from the test split)')
    if ratio is not None:
        if len(ratio) == 2:
            if not train:
                raise ValueError(f'l_ratio {list(ratio)} is a random crop; evaluation features need '
                                 'a deterministic centre crop (one entry, e.g. [0.95])')
            return 'crop_resize'
        return 'center_crop'
    return 'normal' if train and has_augmentation(view_args) else 'raw'


def check_view_args(view_args, where):
    """Clear errors for the crop keys (`where` names the config block)."""
    ratio = view_args.get('l_ratio')
    if ratio is not None:
        if not (isinstance(ratio, (list, tuple)) and len(ratio) in (1, 2)
                and all(isinstance(r, (int, float)) and 0 < r <= 1 for r in ratio)):
            raise ValueError(f'{where}.l_ratio must be [ratio] (centre crop) or [low, high] (random '
                             f'crop) with values in (0, 1], got {ratio!r}')
        if len(ratio) == 2 and ratio[0] > ratio[1]:
            raise ValueError(f'{where}.l_ratio: low {ratio[0]} > high {ratio[1]}')
    order = view_args.get('aug_order')
    if order is not None and order not in composite.AUG_ORDERS:
        raise ValueError(f'{where}.aug_order must be one of {composite.AUG_ORDERS}, got {order!r}')
    rot = view_args.get('random_rot')
    if rot is not None and (isinstance(rot, str) or not 0 <= float(rot) <= math.pi):
        raise ValueError(f'{where}.random_rot must be true, false or an angle in radians, got {rot!r}')
    floor = view_args.get('min_crop')
    if floor is not None and (not isinstance(floor, int) or floor < 1):
        raise ValueError(f'{where}.min_crop must be a positive integer, got {floor!r}')
    corrupt = view_args.get('corrupt_joints')
    if corrupt is not None and (not isinstance(corrupt, int) or isinstance(corrupt, bool) or corrupt < 0):
        raise ValueError(f'{where}.corrupt_joints must be a non-negative integer, got {corrupt!r}')
    size = view_args.get('input_size')
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f'{where}.input_size must be a positive integer, got {size!r}')
