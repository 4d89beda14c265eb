"""Throughput benchmark: every registered pretraining method at its reference configuration,
and the evaluation tasks.

    python tools/benchmark.py [--methods aimclr,skeletonclr,asar,linear_eval,finetune_eval,extract_features]
                              [--steps 3] [--batch 128] [--impl auto|fast|reference] [--amp off|bf16|auto]
                              [--compile] [--threads N] [--device cpu|cuda] [--json PATH]
                              [--linear-e2e] [--linear-train 1024] [--linear-epochs 100]

Per row: training samples/s (median over --steps timed steps; the first, warm-up step is timed
separately: on the CPU it includes oneDNN/MKL initialisation), augmentation clips/s (the
method's own views, batched, `feeder.views.make_views`), peak memory (CUDA: max allocated; CPU:
peak resident set of the process sampled during the timed steps), FLOPs per sample counted by
`torch.utils.flop_counter.FlopCounterMode` over one training step of the plain (impl=reference)
formulation (the fast path computes the same products, partly with in-place kernels the
counter does not see), and the fraction of the machine's fp32 matmul rate (a 2048^3 sgemm,
measured at start) that the step achieves. On CUDA every row is also run with bf16 autocast
(`--amp auto`). Methods that are not registered yet are skipped with a note.

Reference configuration (AimCLR / SkeletonCLR / ASAR): ST-GCN hidden 16, hidden_dim 256,
feature_dim 128, queue 32768, batch 128, T 50, V 25, M 2. Methods with another reference
configuration (REFERENCE_ROWS, e.g. AS-CAL: LSTM 256, queue 16384, batch 32, T 150; MAMP:
Transformer 256 x 8 + decoder 3, batch 32, 300 raw frames cropped and resized to 120) use their
own model arguments, batch, frames and views (--batch / --frames do not apply to them).

`--linear-e2e` additionally times linear evaluation end to end (the `linear_evaluation` task on
a synthetic set) with cached features against `cache_features: false`; the uncached run is
timed for a few epochs and extrapolated to --linear-epochs (printed as such).
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from feeder.views import make_views  # noqa: E402
from torchlight import dist  # noqa: E402
from torchlight.registry import MODELS  # noqa: E402

METHODS = ('aimclr', 'skeletonclr', 'asar', 'ascal', 'hico', 'hico_gru', 'hico_lstm',
           'isc_gru', 'isc_agcn', 'isc_hcn', 'isc_inter', 'mamp')
EVAL_ROWS = ('linear_eval', 'finetune_eval', 'extract_features')
ENCODER = {'base_encoder': 'net.st_gcn.Model', 'in_channels': 3, 'hidden_channels': 16,
           'hidden_dim': 256, 'dropout': 0.5,
           'graph_args': {'layout': 'ntu-rgb+d', 'strategy': 'spatial'},
           'edge_importance_weighting': True}
METHOD_ARGS = {'feature_dim': 128, 'queue_size': 32768, 'momentum': 0.999, 'Temperature': 0.07,
               'mlp': True}
VIEW_ARGS = {'shear_amplitude': 0.5, 'temperal_padding_ratio': 6, 'aug_method': '12345'}
ISC_GRU = {'base_encoder': 'isc_gru', 'en_input_size': 150, 'en_hidden_size': 1024, 'en_num_layers': 3}
# rows whose reference configuration is not the ST-GCN one above: model arguments, batch,
# frames and the epoch passed to the method (AS-CAL: epoch 1 is its gradient-free queue warm-up)
REFERENCE_ROWS = {
    'ascal': {'model_args': {'base_encoder': 'ascal_lstm', 'hidden_units': 256, 'lstm_layer': 1,
                             'queue_size': 16384, 'Temperature': 0.06, 'momentum': 0.999},
              'batch': 32, 'frames': 150, 'epoch': 2},
    # HiCo (spec 4.4): two 64-frame crop_pose views, hidden 512, K 2048, T 0.2; `hico` is the
    # reference default S2S encoder (Transformer)
    **{row: {'model': 'hico', 'model_args': {'encoder': encoder, 'feature_dim': 128, 'queue_size': 2048,
                                             'momentum': 0.999, 'Temperature': 0.2},
             'batch': 64, 'frames': 64}
       for row, encoder in (('hico', 'Transformer'), ('hico_gru', 'GRU'), ('hico_lstm', 'LSTM'))},
    # ISC (spec 3.1, 3.4): raw 300-frame clips -> two 64-frame crop_pose views, K 16384, T 0.07,
    # MLP heads, BIGRU 1024 x 3; intra-skeleton per representation, inter = BIGRU + AGCN
    **{row: {'model': model, 'model_args': {**encoders, 'feature_dim': 128, 'queue_size': 16384,
                                            'momentum': 0.999, 'Temperature': 0.07, 'mlp': True},
             'batch': 64, 'frames': 300}
       for row, model, encoders in (
           ('isc_gru', 'isc', ISC_GRU), ('isc_agcn', 'isc', {'base_encoder': 'agcn'}),
           ('isc_hcn', 'isc', {'base_encoder': 'hcn'}),
           ('isc_inter', 'isc_inter', {**ISC_GRU, 'second_encoder': 'agcn'}))},
    # MAMP (config/ntu60_xsub_joint/pretrain_mamp_t120_layer8+3_mask90.yaml): raw 300-frame clips
    # -> one crop_resize view (random crop [0.5, 1], 120 frames, random rotation); dim 256, depth
    # 8 + decoder 3, mask ratio 0.9; batch 32 = one GPU's share of the original's 4 x 32
    'mamp': {'model_args': {'dim_feat': 256, 'decoder_dim_feat': 256, 'depth': 8, 'decoder_depth': 3,
                            'num_heads': 8, 'num_frames': 120, 'norm_skes_loss': True,
                            'mask_ratio': 0.9, 'motion_aware_tau': 0.8},
             'batch': 32, 'frames': 300,
             'view_args': {'l_ratio': [0.5, 1.0], 'input_size': 120, 'random_rot': True}},
}


# ----------------------------------------------------------------------------- measurement
def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_gflops(device, size=2048, reps=5):
    """Median fp32 GEMM rate of the machine (GFLOP/s)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    times = []
    for _ in range(reps):
        synchronize(device)
        start = now()
        a @ b
        synchronize(device)
        times.append(now() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def rss_mb():
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """CUDA: max allocated; CPU: peak resident set sampled every 5 ms (MB)."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            dist.release_freed_memory()   # memory kept from earlier rows is not this row's
            self.peak = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_mb())


CLOCK = {'clock': 'wall'}


def now():
    """Wall clock, or (--clock cpu) this process's CPU time divided by the torch thread count:
    on a CPU shared with other jobs that estimates the wall time the step would take alone."""
    if CLOCK['clock'] == 'cpu':
        return time.process_time() / torch.get_num_threads()
    return time.perf_counter()


def timed(fn, device, steps, memory=True, warmups=1):
    """(seconds of the first of `warmups` warm-up calls, median seconds of `steps` further
    calls, peak memory MB or None). The warm-ups run inside the memory window: it starts by
    returning the memory kept from earlier rows to the OS, and the warm-up refills the heap as
    training's first step does, so the timed calls are steady-state ones. memory=False: no
    memory sampling (its thread would weigh on millisecond calls such as the views)."""
    with PeakMemory(device) if memory else contextlib.nullcontext() as mem:
        synchronize(device)
        start = now()
        fn()
        synchronize(device)
        warmup = now() - start
        for _ in range(warmups - 1):
            fn()
        times = []
        for _ in range(steps):
            start = now()
            fn()
            synchronize(device)
            times.append(now() - start)
    return warmup, statistics.median(times), mem.peak if memory else None


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def counter_sees(rnn):
    """Whether FlopCounterMode counts this RNN's matmuls (on the CPU a GRU runs as ATen linear
    ops the counter sees; LSTM runs as one fused oneDNN kernel it does not)."""
    param = next(rnn.parameters())
    probe = torch.zeros(2, 1, rnn.input_size, device=param.device, dtype=param.dtype)
    if rnn.batch_first:
        probe = probe.transpose(0, 1)
    with torch.no_grad():
        return count_flops(lambda: rnn(probe)) > 0


def recurrent_flops(model, batch, frames):
    """Matmul FLOPs of the model's RNN layers in one step that FlopCounterMode does not see
    (fused oneDNN / cuDNN RNN kernels): 2*T*N*rows(W_ih)*(I + H) per layer and direction, x3 for
    trained layers (forward + backward, the usual convention), x1 for frozen ones (EMA key encoder)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase) and not counter_sees(module):
            for name, w_ih in module.named_parameters():
                if name.startswith('weight_ih'):
                    w_hh = getattr(module, name.replace('_ih', '_hh'))
                    passes = 3 if w_ih.requires_grad else 1
                    total += 2 * frames * batch * w_ih.shape[0] * (w_ih.shape[1] + w_hh.shape[1]) * passes
    return total


# ----------------------------------------------------------------------------- rows
def build(name, impl, pretrain=True, num_class=60):
    if name in REFERENCE_ROWS:   # not ST-GCN: impl does not apply
        row = REFERENCE_ROWS[name]
        return MODELS.get(row.get('model', name))(**row['model_args'])
    cls = MODELS.get(name)
    args = dict(ENCODER, impl=impl)
    if pretrain:
        return cls(**args, **METHOD_ARGS)
    return cls(**args, pretrain=False, num_class=num_class)


def method_step(model, x, amp, device, epoch=1, view_args=VIEW_ARGS):
    """The engine's step (processor/pretrain.py): views -> method loss -> backward -> SGD."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=1e-4)
    kinds = type(model).views
    gen = torch.Generator().manual_seed(0)

    def step():
        views = make_views(x, kinds, gen, view_args)
        with autocast(amp, device):
            out = model(*views, epoch=epoch)
        optimizer.zero_grad(set_to_none=True)
        out['loss'].backward()
        optimizer.step()
        if hasattr(model, 'after_step'):   # as the engine: e.g. AS-CAL's EMA after the step
            model.after_step()

    def augment():
        make_views(x, kinds, gen, view_args)

    return step, augment


def eval_step(task, model, x, amp, device):
    labels = torch.arange(x.shape[0], device=device) % 60
    fc = model.encoder_q.fc
    if task == 'linear_eval':       # frozen encoder (eval mode) every step, classifier trained
        model.eval()
        optimizer = torch.optim.SGD(fc.parameters(), lr=3.0, momentum=0.9)

        def step():
            with torch.no_grad(), autocast(amp, device):
                feat = model.extract_feature(x)
            with autocast(amp, device):
                loss = torch.nn.functional.cross_entropy(fc(feat.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    elif task == 'finetune_eval':
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step():
            with autocast(amp, device):
                loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:                            # extract_features / k-NN: inference only
        model.eval()

        def step():
            with torch.no_grad(), autocast(amp, device):
                model.extract_feature(x)
    return step, None


def autocast(amp, device):
    if amp == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_row(name, args, device, amp, peak_gflops):
    row = REFERENCE_ROWS.get(name, {})
    batch, frames = row.get('batch', args.batch), row.get('frames', args.frames)
    shape = (batch, 3, frames, 25, 2)
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    is_method = name not in EVAL_ROWS

    def make(impl):
        if is_method:
            model = build(name, impl).to(device)
            return model, method_step(model, x, amp, device, row.get('epoch', 1), row.get('view_args', VIEW_ARGS))
        model = build('skeletonclr', impl, pretrain=False).to(device)
        return model, eval_step(name, model, x, amp, device)

    # FLOPs of the plain formulation (one step, same batch), counted on the CPU formulation
    ref_model, (ref_step, _) = make('reference')
    flops = count_flops(ref_step) + recurrent_flops(ref_model, batch, frames) if not args.no_flops else float('nan')
    del ref_model, ref_step
    model, (step, augment) = make(args.impl)
    if args.compile and hasattr(model, 'encoder_q'):
        model.encoder_q.compile()
    warmup, seconds, peak = timed(step, device, args.steps)
    aug = None
    if augment is not None:
        _, aug_seconds, _ = timed(augment, device, max(args.steps, 10), memory=False, warmups=3)
        aug = batch / aug_seconds
    rate = batch / seconds
    gflop = flops / batch / 1e9
    return {'method': name, 'device': device.type, 'dtype': 'bf16' if amp == 'bf16' else 'fp32',
            'impl': args.impl, 'compile': bool(args.compile), 'threads': torch.get_num_threads(),
            'batch_size': batch, 'frames': frames,
            'train_samples_per_s': rate, 'step_s': seconds, 'warmup_s': warmup,
            'aug_clips_per_s': aug, 'peak_mem_mb': peak, 'gflop_per_sample': gflop,
            'achieved_gflops': gflop * rate, 'matmul_gflops': peak_gflops,
            'fraction_of_matmul_peak': gflop * rate / peak_gflops}


def linear_e2e(args, device):
    """Linear evaluation end to end: cached features vs running the frozen encoder every epoch."""
    from processor.evaluation import LinearEvaluation
    from tests.conftest import write_dataset
    folder = tempfile.mkdtemp(prefix='bench-linear-')
    train = write_dataset(folder, 'train', args.linear_train, t=args.frames, num_class=10, seed=1)
    test = write_dataset(folder, 'test', args.linear_train // 4, t=args.frames, num_class=10, seed=2)
    model_args = dict(ENCODER, impl=args.impl)
    checkpoint = os.path.join(folder, 'encoder.pt')
    torch.save(build('skeletonclr', args.impl).state_dict(), checkpoint)

    def run(cache, epochs, tag):
        argv = ['--work_dir', os.path.join(folder, tag), '--model', 'skeletonclr',
                '--model_args', json.dumps(model_args), '--weights', checkpoint,
                '--ignore_weights', 'encoder_q.fc', 'encoder_k', 'queue',
                '--train_feeder_args.data_path', train[0], '--train_feeder_args.label_path', train[1],
                '--test_feeder_args.data_path', test[0], '--test_feeder_args.label_path', test[1],
                '--num_epoch', str(epochs), '--step', str([int(epochs * 0.8)]), '--eval_interval', '-1',
                '--cache_features', cache, '--num_worker', '0', '--print_log', 'false',
                '--device', device.type, '--save_result', 'false']
        start = time.perf_counter()
        result = LinearEvaluation.from_argv(argv).start()
        return time.perf_counter() - start, result['final_epoch']['accuracy']

    cached_s, cached_acc = run('true', args.linear_epochs, 'cached')
    few = args.linear_uncached_epochs
    short_cached_s, short_cached_acc = run('true', few, 'cached-short')
    uncached_s, uncached_acc = run('false', few, 'uncached-short')
    uncached_full = uncached_s / few * args.linear_epochs
    return {'method': 'linear_eval_end_to_end', 'device': device.type, 'train_clips': args.linear_train,
            'test_clips': args.linear_train // 4, 'epochs': args.linear_epochs,
            'cached_s': cached_s, 'uncached_s_measured': uncached_s, 'uncached_epochs_measured': few,
            'uncached_s_extrapolated': uncached_full, 'speedup': uncached_full / cached_s,
            'same_accuracy_after_%d_epochs' % few: cached_acc is not None and short_cached_acc == uncached_acc,
            'top1_cached_%d_epochs' % few: short_cached_acc[1], 'top1_uncached_%d_epochs' % few: uncached_acc[1]}


def fmt(value, spec):
    return '-' if value is None else format(value, spec)


def print_table(rows):
    head = (f'{"method":<18}{"device":<7}{"dtype":<6}{"batch":>6}{"samples/s":>11}{"step s":>9}'
            f'{"warm-up s":>10}{"aug clips/s":>13}{"peak MB":>9}{"GFLOP/smp":>10}{"GFLOP/s":>9}'
            f'{"of matmul":>10}')
    print(head)
    print('-' * len(head))
    for r in rows:
        print(f'{r["method"]:<18}{r["device"]:<7}{r["dtype"]:<6}{r["batch_size"]:>6}'
              f'{r["train_samples_per_s"]:>11.2f}{r["step_s"]:>9.2f}{r["warmup_s"]:>10.2f}'
              f'{fmt(r["aug_clips_per_s"], ",.0f"):>13}{r["peak_mem_mb"]:>9.0f}'
              f'{r["gflop_per_sample"]:>10.2f}{r["achieved_gflops"]:>9.1f}'
              f'{100 * r["fraction_of_matmul_peak"]:>9.0f}%')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--methods', default=','.join(METHODS + EVAL_ROWS),
                        help='comma-separated rows: ' + ', '.join(METHODS + EVAL_ROWS))
    parser.add_argument('--steps', type=int, default=3, help='timed steps per row (median reported)')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--impl', default='auto', choices=['auto', 'fast', 'reference'],
                        help='ST-GCN implementation (auto: fast on the CPU, cuDNN path on CUDA)')
    parser.add_argument('--amp', default='auto', choices=['off', 'bf16', 'auto'],
                        help='auto: fp32, and on CUDA also bf16 rows')
    parser.add_argument('--compile', action='store_true', help='torch.compile the query encoder')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda')
    parser.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                        help='cpu: process CPU time / threads (for a CPU shared with other jobs; '
                             'CPU rows only)')
    parser.add_argument('--no-flops', action='store_true', help='skip the FLOP count (saves one step per row)')
    parser.add_argument('--json', default=None, help='write the rows as a JSON list to this path')
    parser.add_argument('--linear-e2e', action='store_true', help='also time linear evaluation end to end')
    parser.add_argument('--linear-train', type=int, default=1024, help='synthetic training clips for --linear-e2e')
    parser.add_argument('--linear-epochs', type=int, default=100)
    parser.add_argument('--linear-uncached-epochs', type=int, default=2,
                        help='epochs actually run without the cache (then extrapolated)')
    args = parser.parse_args(argv)
    dist.keep_freed_memory()   # as main.py does
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK['clock'] = args.clock
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available()
                          else ('cpu' if args.device == 'auto' else args.device))
    amps = {'off': ['off'], 'bf16': ['bf16'], 'auto': ['off', 'bf16'] if device.type == 'cuda' else ['off']}[args.amp]
    peak = matmul_gflops(device)
    print(f'device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'{args.clock} clock, fp32 matmul {peak:.1f} GFLOP/s (2048^3, median of 5)', flush=True)
    rows = []
    x = torch.randn(args.batch, 3, args.frames, 25, 2, device=device)
    gen = torch.Generator().manual_seed(0)
    _, aug_s, _ = timed(lambda: make_views(x, ('extreme', 'normal', 'normal'), gen, VIEW_ARGS), device, 20,
                        memory=False, warmups=5)
    aug_row = {'method': 'augment_extreme+2normal', 'device': device.type, 'batch_size': args.batch,
               'aug_clips_per_s': args.batch / aug_s, 'train_samples_per_s': None, 'peak_mem_mb': None,
               'gflop_per_sample': None}
    print(f'batched augmentation, AimCLR views (extreme + 2 normal), batch {args.batch}: '
          f'{aug_row["aug_clips_per_s"]:,.0f} clips/s (median of 20)', flush=True)
    for name in [m.strip() for m in args.methods.split(',') if m.strip()]:
        if name not in EVAL_ROWS and name not in REFERENCE_ROWS and name not in MODELS:
            print(f'skip {name}: no such method or row')
            continue
        for amp in amps:
            row = run_row(name, args, device, amp, peak)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.linear_e2e:
        row = linear_e2e(args, device)
        print(json.dumps(row), flush=True)
    else:
        row = None
    if rows:
        print()
        print_table(rows)
    if row is not None:
        print(f'\nlinear evaluation, {row["train_clips"]} train / {row["test_clips"]} test clips, '
              f'{row["epochs"]} epochs: cached {row["cached_s"]:.1f} s; uncached '
              f'{row["uncached_s_measured"]:.1f} s for {row["uncached_epochs_measured"]} epochs '
              f'-> {row["uncached_s_extrapolated"]:.0f} s extrapolated; speed-up {row["speedup"]:.0f}x')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows + [aug_row] + ([row] if row else []), f, indent=1)
    return rows


if __name__ == '__main__':
    main()
