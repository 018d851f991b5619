/* Vector helpers and register tiles of the attention heads, shared by attention.c and decode.c:
 * float32, GCC/Clang vector extensions, built with -DHS=<head size> -DVL=<floats per vector>. */
#ifndef GPT_PIPELINE_HEADS_H
#define GPT_PIPELINE_HEADS_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef HS
#error "compile with -DHS=<head size>"
#endif
#ifndef VL
#define VL 16
#endif
#if HS % VL != 0
#error "HS must be a multiple of VL"
#endif
#define NV (HS / VL) /* vectors per head row */
#define R 4          /* rows (or columns) per register tile */
#define LINE 16      /* floats per cache line */

typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf load(const float *p) { return *(const vfu *)p; }
static inline void store(float *p, vf v) { *(vfu *)p = v; }
static inline vf splat(float x) { return (vf){0} + x; }
static inline vf choose(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }

/* exp(x) for x <= 0, Cephes' polynomial (about 1 ulp); below -87 it returns exp(-87). */
static inline vf vexp(vf x) {
    x = choose(x < -87.0f, splat(-87.0f), x);
    vf t = x * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(t, vi);      /* truncates ... */
    n = n + (__builtin_convertvector(n, vf) > t); /* ... so floor: -1 where it rounded up */
    vf nf = __builtin_convertvector(n, vf);
    vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vf p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    vf y = p * r * r + r + 1.0f;
    return y * (vf)((n + 127) << 23); /* times 2^n */
}

static inline float hsum(vf v) { float s = 0; for (int l = 0; l < VL; l++) s += v[l]; return s; }
static inline float hmax(vf v) { float m = v[0]; for (int l = 1; l < VL; l++) m = v[l] > m ? v[l] : m; return m; }
static inline vi lane_index(void) { vi v; for (int l = 0; l < VL; l++) v[l] = l; return v; } /* 0, 1, .. VL-1 */
static inline vi lanes_below(int j0, int n) { return lane_index() + j0 < n; }  /* -1 where j0 + lane < n */
static inline int64_t tri(int64_t i) { return i * (i + 1) / 2; }

/* out[r][(c0 + c) * VL ..] = sum_d a[r][d] * bt[d][(c0 + c) * VL ..], r < R, c < NC: a register tile. */
#define DEFINE_TILE(NC)                                                                                   \
    static inline void tile_##NC(const float *a, int64_t as, const float *bt, int tp, int c0, float *out) { \
        vf acc[R][NC];                                                                                    \
        for (int r = 0; r < R; r++) for (int c = 0; c < NC; c++) acc[r][c] = splat(0.0f);                \
        for (int d = 0; d < HS; d++) {                                                                    \
            vf b[NC];                                                                                     \
            for (int c = 0; c < NC; c++) b[c] = load(bt + (int64_t)d * tp + (c0 + c) * VL);               \
            for (int r = 0; r < R; r++) {                                                                 \
                vf ad = splat(a[r * as + d]);                                                             \
                for (int c = 0; c < NC; c++) acc[r][c] += ad * b[c];                                      \
            }                                                                                             \
        }                                                                                                 \
        for (int r = 0; r < R; r++) for (int c = 0; c < NC; c++) store(out + r * tp + (c0 + c) * VL, acc[r][c]); \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)
DEFINE_TILE(4)

/* R rows of a [*, HS] (row stride as) times bt [HS, tp]: out [R, tp], the first `chunks` vectors. */
static void rows_times_t(const float *a, int64_t as, const float *bt, int tp, int chunks, float *out) {
    int c0 = 0;
    for (; c0 + 4 <= chunks; c0 += 4) tile_4(a, as, bt, tp, c0, out);
    if (chunks - c0 == 3) tile_3(a, as, bt, tp, c0, out);
    else if (chunks - c0 == 2) tile_2(a, as, bt, tp, c0, out);
    else if (chunks - c0 == 1) tile_1(a, as, bt, tp, c0, out);
}

/* A row of scores s [chunks * VL]: s = exp(alpha * s - max) over its first n entries, 0 after;
 * returns 1 / their sum (softmax = s * that). */
static inline float softmax_exps(float *s, int n, int chunks, float alpha) {
    vf top = splat(-3.0e38f);
    for (int j0 = 0; j0 < chunks * VL; j0 += VL) {
        const vf x = choose(lanes_below(j0, n), load(s + j0) * alpha, splat(-3.0e38f));
        store(s + j0, x);
        top = choose(x > top, x, top);
    }
    const vf high = splat(hmax(top));
    vf sum = splat(0.0f);
    for (int j0 = 0; j0 < chunks * VL; j0 += VL) {
        const vf e = choose(lanes_below(j0, n), vexp(load(s + j0) - high), splat(0.0f));
        store(s + j0, e);
        sum += e;
    }
    return 1.0f / hsum(sum);
}

/* out[r] = sum_{j < n} w[r][j] * b[j] for R rows of w [*, tp]; b rows [HS] at stride bs; the
 * first `rows` results are written at stride os. */
static inline void rows_times(const float *w, int tp, int n, const float *b, int64_t bs, float *out, int64_t os,
                              int rows) {
    vf acc[R][NV];
    for (int r = 0; r < R; r++) for (int v = 0; v < NV; v++) acc[r][v] = splat(0.0f);
    for (int j = 0; j < n; j++) {
        vf bj[NV];
        for (int v = 0; v < NV; v++) bj[v] = load(b + j * bs + v * VL);
        for (int r = 0; r < R; r++) {
            vf wj = splat(w[r * tp + j]);
            for (int v = 0; v < NV; v++) acc[r][v] += wj * bj[v];
        }
    }
    for (int r = 0; r < rows; r++) for (int v = 0; v < NV; v++) store(out + r * os + v * VL, acc[r][v]);
}

/* xt [HS, tp] = x [T, HS] (row stride xs) transposed, VL x VL blocks through registers. */
static void transpose(const float *x, int64_t xs, int T, float *xt, int tp) {
    int j = 0;
    for (; j + VL <= T; j += VL)
        for (int c = 0; c < NV; c++) {
            vf rows[VL];
            for (int r = 0; r < VL; r++) rows[r] = load(x + (j + r) * xs + c * VL);
            for (int d = 0; d < VL; d++) {
                vf col;
                for (int r = 0; r < VL; r++) col[r] = rows[r][d];
                store(xt + (int64_t)(c * VL + d) * tp + j, col);
            }
        }
    for (; j < T; j++)
        for (int d = 0; d < HS; d++) xt[(int64_t)d * tp + j] = x[j * xs + d];
}

/* Copy rows [rows, HS] (stride xs) into pad [R, HS], zero below: the last tile's rows. */
static const float *padded(const float *x, int64_t xs, int rows, float *pad) {
    memset(pad, 0, sizeof(float) * R * HS);
    for (int r = 0; r < rows; r++) memcpy(pad + r * HS, x + r * xs, sizeof(float) * HS);
    return pad;
}

#endif /* GPT_PIPELINE_HEADS_H */
