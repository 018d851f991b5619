/* gpt-rs's model for sampling, float32 on CPU: every block and the head in one call.
 *
 * For token ids [B, T] at positions start .., the keys and values of positions 0 .. start - 1 in
 * the cache: GPT.forward in eval mode (x = embeddings; per block x += projection(heads(qkv(ln_1(x)))),
 * x += ff_output(relu(ff_input(ln_2(x))))), the final LayerNorm and the head at the last position:
 * logits [B, V]. The new keys and values go to the cache; the last block computes the last
 * position alone. One call because through PyTorch each small product costs more in dispatch than
 * in arithmetic. Products are register tiles over weights pre-transposed to [in, out], each thread
 * taking a share of the output columns, one OpenMP region with barriers between steps; the result
 * does not depend on the thread count. Weights `w[block * PER_BLOCK + ...]` as in the enum below;
 * caches [L, B, ctx, C]; `scratch` as decode_scratch_floats says.
 */
#include "heads.h"

#include <math.h>
#include <omp.h>

#if VL >= 16
#define MR 8 /* rows per product tile: 8 x 2 vectors of accumulators with 32 registers */
#else
#define MR 4
#endif
#define PANEL (2 * VL) /* output columns per product tile */

enum { LN1_W, LN1_B, QKV_W, QKV_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FF1_W, FF1_B, FF2_W, FF2_B, PER_BLOCK };

/* c[r][j ..] = bias[j ..] + sum_k a[r][k] * bt[k][j ..] (+ add[r][j ..]) (then ReLU), for MR_ rows
 * and NB_ vectors of columns: a register tile. `add` may be `c` (a residual updated in place). */
#define PRODUCT_TILE(MR_, NB_)                                                                              \
    static inline void tile_##MR_##x##NB_(const float *a, int64_t lda, const float *bt, int64_t ldb,       \
                                          int64_t K, const float *bias, const float *add, int64_t lde,     \
                                          int relu, float *c, int64_t ldc) {                                \
        vf acc[MR_][NB_];                                                                                   \
        for (int j = 0; j < NB_; j++) {                                                                     \
            const vf b0 = bias ? load(bias + j * VL) : splat(0.0f);                                         \
            for (int r = 0; r < MR_; r++) acc[r][j] = b0;                                                   \
        }                                                                                                   \
        for (int64_t k = 0; k < K; k++) {                                                                   \
            vf b[NB_];                                                                                      \
            for (int j = 0; j < NB_; j++) b[j] = load(bt + k * ldb + j * VL);                               \
            for (int r = 0; r < MR_; r++) {                                                                 \
                const vf ar = splat(a[r * lda + k]);                                                        \
                for (int j = 0; j < NB_; j++) acc[r][j] += ar * b[j];                                       \
            }                                                                                               \
        }                                                                                                   \
        for (int r = 0; r < MR_; r++)                                                                       \
            for (int j = 0; j < NB_; j++) {                                                                 \
                vf v = acc[r][j];                                                                           \
                if (add) v += load(add + r * lde + j * VL);                                                 \
                if (relu) v = choose(v > 0.0f, v, splat(0.0f));                                             \
                store(c + r * ldc + j * VL, v);                                                             \
            }                                                                                               \
    }
PRODUCT_TILE(8, 2)
PRODUCT_TILE(4, 2)
PRODUCT_TILE(2, 2)
PRODUCT_TILE(1, 2)
PRODUCT_TILE(8, 1)
PRODUCT_TILE(4, 1)
PRODUCT_TILE(2, 1)
PRODUCT_TILE(1, 1)

/* Every row of a [M, K] times NB_ vectors of columns: the tiles above, MR rows at a time. */
#define PRODUCT_ROWS(NB_)                                                                                   \
    static void rows_##NB_(const float *a, int64_t lda, const float *bt, int64_t ldb, int64_t K,           \
                           const float *bias, const float *add, int64_t lde, int relu, float *c, int64_t ldc, \
                           int64_t M) {                                                                     \
        int64_t i = 0;                                                                                      \
        for (; MR >= 8 && i + 8 <= M; i += 8)                                                               \
            tile_8x##NB_(a + i * lda, lda, bt, ldb, K, bias, add ? add + i * lde : NULL, lde, relu, c + i * ldc, ldc); \
        for (; i + 4 <= M; i += 4)                                                                          \
            tile_4x##NB_(a + i * lda, lda, bt, ldb, K, bias, add ? add + i * lde : NULL, lde, relu, c + i * ldc, ldc); \
        for (; i + 2 <= M; i += 2)                                                                          \
            tile_2x##NB_(a + i * lda, lda, bt, ldb, K, bias, add ? add + i * lde : NULL, lde, relu, c + i * ldc, ldc); \
        for (; i < M; i++)                                                                                  \
            tile_1x##NB_(a + i * lda, lda, bt, ldb, K, bias, add ? add + i * lde : NULL, lde, relu, c + i * ldc, ldc); \
    }
PRODUCT_ROWS(2)
PRODUCT_ROWS(1)

/* Columns j0 .. j1 - 1 of the same product one at a time (the head's last columns when V is not
 * a multiple of VL). */
static void columns(const float *a, int64_t lda, const float *bt, int64_t ldb, int64_t K, const float *bias,
                    const float *add, int64_t lde, int relu, float *c, int64_t ldc, int64_t M, int64_t j0,
                    int64_t j1) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = j0; j < j1; j++) {
            float s = bias ? bias[j] : 0.0f;
            for (int64_t k = 0; k < K; k++) s += a[i * lda + k] * bt[k * ldb + j];
            if (add) s += add[i * lde + j];
            c[i * ldc + j] = relu && !(s > 0.0f) ? 0.0f : s;
        }
}

/* This thread's share (t of nt) of c [M, N] = a [M, K] @ bt [K, N] + bias (+ add) (then ReLU):
 * the PANEL-wide column panels t * panels / nt .. (t + 1) * panels / nt - 1. */
static void product(const float *a, int64_t lda, const float *bt, int64_t N, int64_t K, const float *bias,
                    const float *add, int64_t lde, int relu, float *c, int64_t ldc, int64_t M, int t, int nt) {
    const int64_t panels = (N + PANEL - 1) / PANEL;
    for (int64_t p = panels * t / nt; p < panels * (t + 1) / nt; p++) {
        const int64_t j = p * PANEL, width = N - j < PANEL ? N - j : PANEL;
        const float *bias_j = bias ? bias + j : NULL, *add_j = add ? add + j : NULL;
        if (width == PANEL) {
            rows_2(a, lda, bt + j, N, K, bias_j, add_j, lde, relu, c + j, ldc, M);
            continue;
        }
        int64_t done = 0; /* a narrower last panel: whole vectors, then single columns */
        if (width >= VL) {
            rows_1(a, lda, bt + j, N, K, bias_j, add_j, lde, relu, c + j, ldc, M);
            done = VL;
        }
        if (done < width) columns(a, lda, bt, N, K, bias, add, lde, relu, c, ldc, M, j + done, j + width);
    }
}

/* Rows r0 .. r1 - 1 of y (stride ys) = LayerNorm(x) (stride xs) with weight w, bias b over C. */
static void layer_norm(const float *x, int64_t xs, const float *w, const float *b, float *y, int64_t ys, int64_t C,
                       float eps, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * xs;
        float *yr = y + r * ys;
        vf sum = splat(0.0f);
        for (int64_t c = 0; c < C; c += VL) sum += load(xr + c);
        const float mean = hsum(sum) / (float)C;
        vf squares = splat(0.0f);
        for (int64_t c = 0; c < C; c += VL) {
            const vf d = load(xr + c) - mean;
            squares += d * d;
        }
        const float inv = 1.0f / sqrtf(hsum(squares) / (float)C + eps);
        for (int64_t c = 0; c < C; c += VL) store(yr + c, (load(xr + c) - mean) * inv * load(w + c) + load(b + c));
    }
}

/* One head: o rows [rows, HS] (stride os) = softmax(alpha q k^T) v for the query rows q [rows, HS]
 * (stride qs) at positions first .. first + rows - 1, each against the keys up to its own; k and
 * v hold rows 0 .. first + rows - 1 (stride kvs). Scratch: kt [HS, tp], s [R, tp], pad [R, HS]. */
static void attend(const float *q, int64_t qs, int rows, int first, const float *k, const float *v, int64_t kvs,
                   float *o, int64_t os, float alpha, float *kt, float *s, float *pad, int tp) {
    transpose(k, kvs, first + rows, kt, tp);
    for (int i0 = 0; i0 < rows; i0 += R) {
        const int tile = rows - i0 < R ? rows - i0 : R, n_max = first + i0 + tile, chunks = (n_max + VL - 1) / VL;
        rows_times_t(tile < R ? padded(q + i0 * qs, qs, tile, pad) : q + i0 * qs, tile < R ? HS : qs, kt, tp,
                     chunks, s);
        for (int r = 0; r < tile; r++) {
            const int n = first + i0 + r + 1; /* keys 0 .. n - 1 */
            float *sr = s + r * tp;
            const float inv = softmax_exps(sr, n, chunks, alpha);
            for (int j0 = 0; j0 < chunks * VL; j0 += VL) store(sr + j0, load(sr + j0) * inv);
        }
        rows_times(s, tp, n_max, v, kvs, o + i0 * os, os, tile);
    }
}

static inline int64_t share(int64_t n, int t, int nt) { return n * t / nt; } /* rows share(n, t) .. share(n, t + 1) */

static inline int padded_context(int64_t ctx) { return (int)((ctx + VL - 1) / VL * VL); }

/* Floats of `scratch` decode_forward needs for B prompts of up to T positions on `threads` threads. */
int64_t decode_scratch_floats(int64_t B, int64_t T, int64_t C, int64_t F, int64_t ctx, int threads) {
    const int64_t tp = padded_context(ctx);
    return B * T * (6 * C + F) + 2 * B * C + (int64_t)threads * (HS * tp + R * tp + R * HS);
}

/* Returns 0, or -1 for a token id outside 0 .. V - 1 (nothing is computed then). */
int decode_forward(const float *const *w, const float *token_embedding, const float *position_embedding,
                   const float *final_w, const float *final_b, const float *head, const int64_t *ids,
                   int64_t ids_stride, float *keys, float *values, float *logits, float *scratch, int64_t B,
                   int64_t T, int64_t start, int64_t L, int64_t C, int64_t H, int64_t F, int64_t V, int64_t ctx,
                   float eps, int threads) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < T; i++)
            if (ids[b * ids_stride + i] < 0 || ids[b * ids_stride + i] >= V) return -1;
    const int64_t M = B * T, C3 = 3 * C;
    const int tp = padded_context(ctx);
    const float alpha = 1.0f / sqrtf((float)HS);
    float *x = scratch, *h = x + M * C, *qkv = h + M * C, *y = qkv + M * C3, *f = y + M * C;
    float *last = f + M * F, *last_h = last + B * C; /* the last position of each prompt, [B, C] each */
    float *per_thread = last_h + B * C;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *kt = per_thread + (int64_t)t * (HS * tp + R * tp + R * HS), *s = kt + HS * tp, *pad = s + R * tp;
        memset(kt, 0, sizeof(float) * HS * tp);
        for (int64_t r = share(M, t, nt); r < share(M, t + 1, nt); r++) { /* embeddings */
            const float *tok = token_embedding + ids[(r / T) * ids_stride + r % T] * C;
            const float *pos = position_embedding + (start + r % T) * C;
            for (int64_t c = 0; c < C; c += VL) store(x + r * C + c, load(tok + c) + load(pos + c));
        }
#pragma omp barrier
        for (int64_t l = 0; l < L; l++) {
            const float *const *p = w + l * PER_BLOCK;
            /* after the attention, the last block computes each prompt's last position alone, into `last` */
            const int only_last = l == L - 1;
            const int64_t first = only_last ? T - 1 : 0, rows = only_last ? B : M;
            float *kc = keys + l * B * ctx * C, *vc = values + l * B * ctx * C, *out = only_last ? last : x;
            layer_norm(x, C, p[LN1_W], p[LN1_B], h, C, C, eps, share(M, t, nt), share(M, t + 1, nt));
#pragma omp barrier
            product(h, C, p[QKV_W], C3, C, p[QKV_B], NULL, 0, 0, qkv, C3, M, t, nt);
#pragma omp barrier
            for (int64_t pair = share(B * H, t, nt); pair < share(B * H, t + 1, nt); pair++) {
                const int64_t b = pair / H, hd = pair % H;
                float *kb = kc + b * ctx * C + hd * HS, *vb = vc + b * ctx * C + hd * HS;
                for (int64_t i = 0; i < T; i++) { /* this head's new keys and values into the cache */
                    const float *row = qkv + (b * T + i) * C3 + hd * HS;
                    memcpy(kb + (start + i) * C, row + C, sizeof(float) * HS);
                    memcpy(vb + (start + i) * C, row + 2 * C, sizeof(float) * HS);
                }
                attend(qkv + (b * T + first) * C3 + hd * HS, C3, (int)(T - first), (int)(start + first), kb, vb, C,
                       y + b * (T - first) * C + hd * HS, C, alpha, kt, s, pad, tp);
            }
#pragma omp barrier
            /* out = x (its rows from `first`, every T-th for the last block) + projection */
            product(y, C, p[PROJ_W], C, C, p[PROJ_B], x + first * C, only_last ? T * C : C, 0, out, C, rows, t, nt);
#pragma omp barrier
            layer_norm(out, C, p[LN2_W], p[LN2_B], h, C, C, eps, share(rows, t, nt), share(rows, t + 1, nt));
#pragma omp barrier
            product(h, C, p[FF1_W], F, C, p[FF1_B], NULL, 0, 1, f, F, rows, t, nt);
#pragma omp barrier
            product(f, F, p[FF2_W], C, F, p[FF2_B], out, C, 0, out, C, rows, t, nt); /* out += feed-forward */
#pragma omp barrier
        }
        layer_norm(last, C, final_w, final_b, last_h, C, C, eps, share(B, t, nt), share(B, t + 1, nt));
#pragma omp barrier
        product(last_h, C, head, V, C, NULL, NULL, 0, 0, logits, V, B, t, nt);
    }
    return 0;
}
