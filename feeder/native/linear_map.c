/* Fused CPU kernel for feeder.composite.LinearMap.
 *
 * A view of a clip is a per-sample linear map: select frames (crop, temporal flips), permute
 * joints (spatial flips), blur along time (a 15-tap kernel, zero padding) and apply a 3x3
 * coordinate map; the extreme view adds Gaussian noise passed through the map of the ops after
 * it. PyTorch needs one memory pass per factor; this kernel does them in one pass per sample,
 * with the sample's working set in the cache, and draws the noise where it adds it. The
 * PyTorch formulation (LinearMap.apply_torch in feeder/composite.py) is the reference it is
 * tested against (tests/test_composite.py); feeder/native/__init__.py builds and calls it and
 * checks every index before the call.
 *
 * Clips are float32, contiguous, shaped (n, 3, T, V, M); optional inputs are NULL for the
 * identity.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define C 3
#define BLOCK 8        /* floats per register block of the blur */
#define GROUP 4        /* blocks accumulated side by side */
#define MAX_RADIUS 32  /* longest blur kernel: 2 * 32 + 1 taps */

/* 8 floats as one value: one AVX register where the target has it (GCC/Clang extension) */
typedef float block __attribute__((vector_size(BLOCK * sizeof(float))));

static inline block splat(float value)
{
    block b;
    for (int k = 0; k < BLOCK; k++)
        b[k] = value;
    return b;
}

/* out[:] (=|+=) a * r0[:] + b * r1[:] + d * r2[:] */
static void mix_row(float *restrict out, const float *restrict r0, const float *restrict r1,
                    const float *restrict r2, float a, float b, float d, int64_t len, int accumulate)
{
    if (accumulate) {
        for (int64_t j = 0; j < len; j++)
            out[j] += a * r0[j] + b * r1[j] + d * r2[j];
    } else {
        for (int64_t j = 0; j < len; j++)
            out[j] = a * r0[j] + b * r1[j] + d * r2[j];
    }
}

/* out[j, :] = in[joints[j], :] for the v joints of one frame (m floats each) */
static void gather_joints(float *restrict out, const float *restrict in, const int64_t *joints,
                          int64_t v, int64_t m)
{
    if (m == 2) {   /* the usual two bodies: two loads per joint, no call */
        for (int64_t j = 0; j < v; j++) {
            out[2 * j] = in[2 * joints[j]];
            out[2 * j + 1] = in[2 * joints[j] + 1];
        }
        return;
    }
    for (int64_t j = 0; j < v; j++)
        memcpy(out + j * m, in + joints[j] * m, (size_t)m * sizeof(float));
}

/* Channel c of output frame t before blur and map: a row of the source, or its joint gather
 * written to `scratch`. */
static const float *source_row(const float *src, int64_t c, int64_t t, int64_t t_in, int64_t v,
                               int64_t m, const int64_t *frames, const int64_t *joints,
                               float *scratch)
{
    const float *in = src + (c * t_in + (frames ? frames[t] : t)) * v * m;
    if (!joints)
        return in;
    gather_joints(scratch, in, joints, v, m);
    return scratch;
}

static int is_identity(const int64_t *joints, int64_t v)
{
    for (int64_t j = 0; j < v; j++)
        if (joints[j] != j)
            return 0;
    return 1;
}

/* One sample: dst[c, t] (=|+=) sum_c' map[c, c'] blur(src[c', frames, joints])[t], where blur
 * is the 15-tap (2 * radius + 1) kernel `taps` along time with zero padding, or none.
 * scratch holds (T + 1) * (3 * V * M + GROUP * BLOCK) floats. */
static void one_sample(const float *src, float *dst, int64_t t_in, int64_t t_out, int64_t v,
                       int64_t m, const int64_t *frames, const int64_t *joints,
                       const float *channel, const float *taps, int64_t radius, int accumulate,
                       float *scratch)
{
    static const float identity[C * C] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    const float *map = channel ? channel : identity;
    const int64_t row = v * m, wide = C * row;
    if (joints && is_identity(joints, v))
        joints = NULL;
    if (!taps) {
        for (int64_t t = 0; t < t_out; t++) {
            const float *in[C];
            for (int64_t c = 0; c < C; c++)
                in[c] = source_row(src, c, t, t_in, v, m, frames, joints, scratch + c * row);
            for (int64_t c = 0; c < C; c++)
                mix_row(dst + (c * t_out + t) * row, in[0], in[1], in[2],
                        map[c * C], map[c * C + 1], map[c * C + 2], row, accumulate);
        }
        return;
    }
    /* Blurred: gather every frame with its 3 channels side by side (gathered[t] = 3 rows,
     * padded to whole blocks of 8 floats), then each output frame is a weighted sum of up to
     * 2 * radius + 1 gathered frames, accumulated 8 floats at a time in registers. */
    const int64_t stride = (wide + GROUP * BLOCK - 1) / (GROUP * BLOCK) * (GROUP * BLOCK);
    float *gathered = scratch + stride;
    for (int64_t t = 0; t < t_out; t++) {
        float *frame = gathered + t * stride;
        for (int64_t c = 0; c < C; c++) {
            const float *in = src + (c * t_in + (frames ? frames[t] : t)) * row;
            if (joints)
                gather_joints(frame + c * row, in, joints, v, m);
            else
                memcpy(frame + c * row, in, (size_t)row * sizeof(float));
        }
        memset(frame + wide, 0, (size_t)(stride - wide) * sizeof(float));
    }
    float *acc = scratch;
    for (int64_t t = 0; t < t_out; t++) {
        /* the taps that matter: the tails of narrow kernels (sigma 0.1: w_2 = e^-200) would
         * make subnormal products, ~100 cycles each on x86, that change no float of a clip */
        const float *source[2 * MAX_RADIUS + 1];
        float weight[2 * MAX_RADIUS + 1];
        int64_t count = 0;
        for (int64_t s = t - radius; s <= t + radius; s++) {
            const float w = taps[s - t + radius];
            if (s < 0 || s >= t_out || fabsf(w) < 1e-30f)
                continue;
            source[count] = gathered + s * stride;
            weight[count++] = w;
        }
        /* GROUP blocks at once: independent sums, so the multiply-adds of one tap overlap
         * instead of waiting on each other's latency */
        for (int64_t j = 0; j < stride; j += GROUP * BLOCK) {
            block sum[GROUP] = {{0}}, value;
            for (int64_t k = 0; k < count; k++) {
                const block w = splat(weight[k]);
                for (int g = 0; g < GROUP; g++) {
                    memcpy(&value, source[k] + j + g * BLOCK, sizeof(value));   /* unaligned load */
                    sum[g] += w * value;
                }
            }
            memcpy(acc + j, sum, sizeof(sum));
        }
        for (int64_t c = 0; c < C; c++)
            mix_row(dst + (c * t_out + t) * row, acc, acc + row, acc + 2 * row,
                    map[c * C], map[c * C + 1], map[c * C + 2], row, accumulate);
    }
}

/* ---------------------------------------------------------------- Gaussian noise
 *
 * Each sample's noise comes from its own stream, a splitmix64 sequence started from a hash of
 * (seed, stream id), so values depend only on the seed and the sample, not on the threads or
 * on which other samples get noise. Normals by Box-Muller, 8 pairs at a time: one 64-bit draw
 * gives the radius (high 32 bits: u in (0, 1], tails to 6.6 sigma) and the angle (low 32 bits:
 * a quadrant and a uniform offset within it), with the Cephes float polynomials for log, sin
 * and cos (errors ~1e-7; tests/test_native.py compares them with a float64 Box-Muller of the
 * same bits).
 */
typedef struct { uint64_t x; } stream_t;

/* splitmix64 (Steele, Lea & Flood 2014): a Weyl sequence through a 64-bit mixer */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t next64(stream_t *r)
{
    return mix64(r->x += 0x9E3779B97F4A7C15ull);
}

static void seed_stream(stream_t *r, uint64_t seed, uint64_t id)
{
    r->x = mix64(seed ^ mix64(id + 0x632BE59BD9B4E019ull));
}

typedef int32_t iblock __attribute__((vector_size(BLOCK * sizeof(int32_t))));

static inline block sqrt_block(block b)   /* vectorised with -fno-math-errno */
{
    for (int k = 0; k < BLOCK; k++)
        b[k] = sqrtf(b[k]);
    return b;
}

static inline iblock as_int(block b) { iblock i; memcpy(&i, &b, sizeof(i)); return i; }
static inline block as_float(iblock i) { block b; memcpy(&b, &i, sizeof(b)); return b; }

/* natural log of u in [2^-32, 1] (Cephes logf) */
static inline block log_block(block u)
{
    const iblock bits = as_int(u);
    iblock exponent = ((bits >> 23) & 0xff) - 126;
    block m = as_float((bits & 0x007fffff) | 0x3f000000);   /* u = m 2^exponent, m in [0.5, 1) */
    const iblock small = m < splat(0.707106781186547524f);  /* -1 where true */
    exponent += small;
    const block x = m - splat(1.0f) + as_float(small & as_int(m));   /* small: 2m - 1 */
    const block z = x * x;
    block y = splat(7.0376836292E-2f);
    y = y * x - splat(1.1514610310E-1f);
    y = y * x + splat(1.1676998740E-1f);
    y = y * x - splat(1.2420140846E-1f);
    y = y * x + splat(1.4249322787E-1f);
    y = y * x - splat(1.6668057665E-1f);
    y = y * x + splat(2.0000714765E-1f);
    y = y * x - splat(2.4999993993E-1f);
    y = y * x + splat(3.3333331174E-1f);
    const block e = __builtin_convertvector(exponent, block);
    y = y * x * z + e * splat(-2.12194440e-4f) - splat(0.5f) * z;
    return x + y + e * splat(0.693359375f);
}

/* 8 pairs of N(0, std^2) values from 8 64-bit draws */
static void box_muller(const uint64_t *draws, float std, block *first, block *second)
{
    iblock high, low;
    for (int k = 0; k < BLOCK; k++) {
        high[k] = (int32_t)(draws[k] >> 33);                 /* 31 bits */
        low[k] = (int32_t)(uint32_t)draws[k];
    }
    const block u = (__builtin_convertvector(high, block) + splat(0.5f)) * splat(4.656612873077392578125e-10f);
    const block r = splat(std) * sqrt_block(splat(-2.0f) * log_block(u));
    /* angle = quadrant * pi/2 + phi, phi uniform in [-pi/4, pi/4) */
    const iblock quadrant = (low >> 30) & 3;
    const block phi = (__builtin_convertvector((low >> 6) & 0xffffff, block) * splat(5.9604644775390625e-8f)
                       - splat(0.5f)) * splat(1.57079632679489662f);
    const block z = phi * phi;
    const block sine = ((splat(-1.9515295891E-4f) * z + splat(8.3321608736E-3f)) * z - splat(1.6666654611E-1f)) * z * phi + phi;
    const block cosine = ((splat(2.443315711809948E-5f) * z - splat(1.388731625493765E-3f)) * z
                          + splat(4.166664568298827E-2f)) * z * z - splat(0.5f) * z + splat(1.0f);
    /* rotate (cos phi, sin phi) by quadrant * pi/2: odd quadrants swap, signs by quadrant */
    const iblock swap = -(quadrant & 1);
    const iblock a = (as_int(cosine) & ~swap) | (as_int(sine) & swap);
    const iblock b = (as_int(sine) & ~swap) | (as_int(cosine) & swap);
    const iblock sign_a = ((quadrant + 1) & 2) << 30, sign_b = (quadrant & 2) << 30;
    *first = r * as_float(a ^ sign_a);
    *second = r * as_float(b ^ sign_b);
}

static void fill_normal(float *out, int64_t count, uint64_t seed, uint64_t id, float std)
{
    stream_t r;
    seed_stream(&r, seed, id);
    const int64_t pairs = (count + 1) / 2;   /* out = first values of the pairs, then the second */
    for (int64_t done = 0; done < pairs; done += BLOCK) {
        uint64_t draws[BLOCK];
        for (int k = 0; k < BLOCK; k++)
            draws[k] = next64(&r);
        block first, second;
        box_muller(draws, std, &first, &second);
        if (pairs + done + BLOCK <= count) {   /* whole blocks: two vector stores */
            memcpy(out + done, &first, sizeof(first));
            memcpy(out + pairs + done, &second, sizeof(second));
            continue;
        }
        for (int k = 0; k < BLOCK && done + k < pairs; k++) {
            out[done + k] = first[k];
            if (pairs + done + k < count)
                out[pairs + done + k] = second[k];
        }
    }
}

/* ---------------------------------------------------------------- entry points
 *
 * Samples are independent, so each call splits its samples into `threads` contiguous ranges
 * and runs them on POSIX threads created for the call (no pool survives into a fork()ed
 * worker). Python releases the GIL around the call (ctypes).
 */
typedef struct {
    const float *src;
    float *dst;
    int64_t t_in, t_out, v, m, radius;
    const int64_t *frames, *joints, *blur_slot, *dst_index;
    const float *channel, *taps;
    int accumulate;
    uint64_t noise_seed;
    float noise_std;
    /* draw_normal */
    float *out;
    int64_t size;
    const int64_t *ids;
} job_t;

typedef struct {
    const job_t *job;
    int64_t begin, end;
    int (*run)(const job_t *, int64_t, int64_t);
    int status;
} range_t;

static void *run_range(void *arg)
{
    range_t *range = arg;
    range->status = range->run(range->job, range->begin, range->end);
    return NULL;
}

#define MAX_THREADS 64

static int run_parallel(const job_t *job, int64_t n, int threads,
                        int (*run)(const job_t *, int64_t, int64_t))
{
    if (threads < 1)
        threads = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads > n)
        threads = n > 0 ? (int)n : 1;
    range_t ranges[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 0; k < threads; k++)
        ranges[k] = (range_t){job, n * k / threads, n * (k + 1) / threads, run, 0};
    for (int k = 1; k < threads; k++)   /* a thread that fails to start runs inline below */
        started[k] = pthread_create(&ids[k], NULL, run_range, &ranges[k]) == 0;
    run_range(&ranges[0]);
    int status = ranges[0].status;
    for (int k = 1; k < threads; k++) {
        if (started[k])
            pthread_join(ids[k], NULL);
        else
            run_range(&ranges[k]);
        if (ranges[k].status)
            status = ranges[k].status;
    }
    return status;
}

static int draw_range(const job_t *job, int64_t begin, int64_t end)
{
    for (int64_t i = begin; i < end; i++)
        fill_normal(job->out + i * job->size, job->size, job->noise_seed, (uint64_t)job->ids[i],
                    job->noise_std);
    return 0;
}

/* out (n, size): row i is `size` N(0, std^2) values of the stream ids[i] of `seed`. */
void draw_normal(float *out, int64_t n, int64_t size, const int64_t *ids, uint64_t seed,
                 float std, int threads)
{
    const job_t job = {.out = out, .size = size, .ids = ids, .noise_seed = seed, .noise_std = std};
    run_parallel(&job, n, threads, draw_range);
}

static int map_range(const job_t *job, int64_t begin, int64_t end)
{
    const int64_t row = job->v * job->m, in_size = C * job->t_in * row, out_size = C * job->t_out * row;
    /* scratch: the blur's frames, then (src == NULL) the sample's noise */
    const int64_t blur_size = (job->t_out + 1) * (C * row + GROUP * BLOCK);
    float *scratch = malloc((size_t)(blur_size + (job->src ? 0 : in_size)) * sizeof(float));
    if (!scratch)
        return -1;
    for (int64_t i = begin; i < end; i++) {
        const int64_t slot = job->blur_slot ? job->blur_slot[i] : -1;
        const int64_t target = job->dst_index ? job->dst_index[i] : i;
        const float *sample = job->src + i * in_size;
        if (!job->src) {
            fill_normal(scratch + blur_size, in_size, job->noise_seed, (uint64_t)target, job->noise_std);
            sample = scratch + blur_size;
        }
        one_sample(sample, job->dst + target * out_size, job->t_in, job->t_out, job->v, job->m,
                   job->frames ? job->frames + i * job->t_out : NULL,
                   job->joints ? job->joints + i * job->v : NULL,
                   job->channel ? job->channel + i * C * C : NULL,
                   slot >= 0 ? job->taps + slot * (2 * job->radius + 1) : NULL, job->radius,
                   job->accumulate, scratch);
    }
    free(scratch);
    return 0;
}

/* The n source samples of src (n, 3, t_in, v, m) into dst (., 3, t_out, v, m).
 * frames (n, t_out), joints (n, v), channel (n, 3, 3): per source sample, NULL = identity.
 * blur_slot (n): row of taps (k, 2 * radius + 1) blurring that sample, < 0 = no blur; NULL =
 * no sample blurred. dst_index (n): output sample of each source sample; NULL = the same.
 * accumulate: add to dst instead of overwriting it.
 * src NULL: each source sample is instead noise, N(0, noise_std^2) from the stream of its
 * output sample (as draw_normal with ids = dst_index), so noise never goes through memory.
 * Returns 0; -1 when a scratch buffer cannot be allocated, -2 when radius > MAX_RADIUS. */
int apply_linear_map(const float *src, float *dst, int64_t n, int64_t t_in, int64_t t_out,
                     int64_t v, int64_t m, const int64_t *frames, const int64_t *joints,
                     const float *channel, const int64_t *blur_slot, const float *taps,
                     int64_t radius, const int64_t *dst_index, int accumulate,
                     uint64_t noise_seed, float noise_std, int threads)
{
    if (radius > MAX_RADIUS)
        return -2;
    const job_t job = {.src = src, .dst = dst, .t_in = t_in, .t_out = t_out, .v = v, .m = m,
                       .radius = radius, .frames = frames, .joints = joints, .blur_slot = blur_slot,
                       .dst_index = dst_index, .channel = channel, .taps = taps,
                       .accumulate = accumulate, .noise_seed = noise_seed, .noise_std = noise_std};
    return run_parallel(&job, n, threads, map_range);
}
