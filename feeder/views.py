"""Turns a raw batch into the views a method asks for (`method.views`), batched on the device."""
from feeder import ascal_augment, augment

VIEW_KINDS = ('raw', 'normal', 'extreme', 'ascal1', 'ascal2')


def make_views(x, kinds, gen, view_args):
    """x: (N, C, T, V, M) raw clips on the device; kinds: e.g. ('extreme', 'normal', 'normal');
    gen: CPU torch.Generator for this (seed, epoch, step, rank); view_args: the feeder's
    augmentation keys (shear_amplitude, temperal_padding_ratio, aug_method, ...)."""
    views = []
    for kind in kinds:
        if kind == 'raw':
            views.append(x)
        elif kind == 'normal':
            views.append(augment.normal_view(
                x, gen, shear_amplitude=view_args.get('shear_amplitude', 0.5),
                temperal_padding_ratio=view_args.get('temperal_padding_ratio', 6)))
        elif kind == 'extreme':
            views.append(augment.extreme_view(
                x, gen, shear_amplitude=view_args.get('shear_amplitude', 0.5),
                temperal_padding_ratio=view_args.get('temperal_padding_ratio', 6),
                aug_method=view_args.get('aug_method') or '12345',
                layout=view_args.get('layout'),
                blur_normalized=view_args.get('blur_normalized', True)))
        elif kind in ('ascal1', 'ascal2'):   # AS-CAL: transform strings aug1 / aug2
            views.append(ascal_augment.ascal_view(
                x, gen, transform=view_args.get('aug' + kind[-1], ascal_augment.DEFAULT_TRANSFORM),
                list_args=view_args.get('list_args', ascal_augment.DEFAULT_LIST_ARGS),
                blur_normalized=view_args.get('blur_normalized', True)))
        else:
            raise ValueError(f'unknown view kind {kind!r}; expected one of {VIEW_KINDS}')
    return views


def has_augmentation(view_args):
    """True when a 'normal' view would change the clip (reference: both keys <= 0 disable it)."""
    return view_args.get('shear_amplitude', -1) > 0 or view_args.get('temperal_padding_ratio', -1) > 0
