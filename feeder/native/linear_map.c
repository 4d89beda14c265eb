/* Fused CPU kernel for feeder.augment.LinearMap.
 *
 * A view of a clip is a per-sample linear map: select frames (crop, temporal flips), permute
 * joints (spatial flips), blur along time (a 15-tap kernel, zero padding) and apply a 3x3
 * coordinate map.
 * PyTorch needs one memory pass per factor; this kernel does them in one pass per sample, with
 * the sample's working set in the cache. The PyTorch formulation (LinearMap.apply_torch in
 * feeder/augment.py) is the reference it is tested against; feeder/native/__init__.py builds
 * and calls it.
 *
 * Clips are float32, contiguous, shaped (n, 3, T, V, M); optional inputs are NULL for the
 * identity. The function is reentrant: callers may run disjoint sample ranges in parallel.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define C 3
#define BLOCK 8        /* floats per register block of the blur */
#define MAX_RADIUS 32  /* longest blur kernel: 2 * 32 + 1 taps */

/* 8 floats as one value: one AVX register where the target has it (GCC/Clang extension) */
typedef float block __attribute__((vector_size(BLOCK * sizeof(float))));

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
 * scratch holds (T + 1) * (3 * V * M + BLOCK) floats. */
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
    const int64_t stride = (wide + BLOCK - 1) / BLOCK * BLOCK;
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
        for (int64_t j = 0; j < stride; j += BLOCK) {
            block sum = {0}, value;
            for (int64_t k = 0; k < count; k++) {
                memcpy(&value, source[k] + j, sizeof(value));   /* unaligned load */
                sum += weight[k] * value;
            }
            memcpy(acc + j, &sum, sizeof(sum));
        }
        for (int64_t c = 0; c < C; c++)
            mix_row(dst + (c * t_out + t) * row, acc, acc + row, acc + 2 * row,
                    map[c * C], map[c * C + 1], map[c * C + 2], row, accumulate);
    }
}

/* Source samples [begin, end) of src (n, 3, t_in, v, m) into dst (., 3, t_out, v, m).
 * frames (n, t_out), joints (n, v), channel (n, 3, 3): per source sample, NULL = identity.
 * blur_slot (n): row of taps (k, 2 * radius + 1) blurring that sample, < 0 = no blur; NULL =
 * no sample blurred. dst_index (n): output sample of each source sample; NULL = the same.
 * accumulate: add to dst instead of overwriting it.
 * Returns 0; -1 when the scratch buffer cannot be allocated, -2 when radius > MAX_RADIUS
 * (nothing written). */
int apply_linear_map(const float *src, float *dst, int64_t begin, int64_t end, int64_t t_in,
                     int64_t t_out, int64_t v, int64_t m, const int64_t *frames,
                     const int64_t *joints, const float *channel, const int64_t *blur_slot,
                     const float *taps, int64_t radius, const int64_t *dst_index, int accumulate)
{
    const int64_t row = v * m, in_size = C * t_in * row, out_size = C * t_out * row;
    if (radius > MAX_RADIUS)
        return -2;
    float *scratch = malloc((size_t)((t_out + 1) * (C * row + BLOCK)) * sizeof(float));
    if (!scratch)
        return -1;
    for (int64_t i = begin; i < end; i++) {
        const int64_t slot = blur_slot ? blur_slot[i] : -1;
        one_sample(src + i * in_size, dst + (dst_index ? dst_index[i] : i) * out_size, t_in,
                   t_out, v, m, frames ? frames + i * t_out : NULL, joints ? joints + i * v : NULL,
                   channel ? channel + i * C * C : NULL,
                   slot >= 0 ? taps + slot * (2 * radius + 1) : NULL, radius, accumulate, scratch);
    }
    free(scratch);
    return 0;
}
