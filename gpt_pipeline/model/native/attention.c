/* gpt-rs's causal attention heads, forward and backward, for CPU training (float32).
 *
 * For every (batch row b, head h), q, k, v the head's [T, HS] slices of qkv [B, T, 3C]:
 *   P = softmax(alpha * q k^T) over keys j <= i, W = P with the dropped weights 0 and the rest
 *   times keep_scale, out[b, i, h * HS ..] = (W v)[i]; and the gradient of qkv from out's.
 * Each pair runs on one thread (OpenMP), in cache, reading q, k, v where the projection wrote
 * them; the result does not depend on the thread count. `dropped`: sorted flat indices of the
 * dropped weights in [B, H, T, T] (those above the diagonal are 0 anyway and skipped). `probs`
 * [B, H, T(T+1)/2] keeps P for the backward, row i's keys 0..i at i(i+1)/2 ...
 * Backward, per row i, g the output's gradient: dW_ij = g_i . v_j, D_i = g_i . out_i,
 * dS_ij = alpha * P_ij * (keep_ij * keep_scale * dW_ij - D_i); dq = dS k, dk = dS^T q, dv = W^T g.
 */
#include "heads.h"

static int64_t lower_bound(const int64_t *a, int64_t n, int64_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) { int64_t mid = lo + (hi - lo) / 2; if (a[mid] < v) lo = mid + 1; else hi = mid; }
    return lo;
}

/* Columns j0 .. j0 + R - 1 of two lower-triangular [T, tp] matrices (zero above the diagonal)
 * times rows: out[c] = sum_{i >= j0} w[i][j0 + c] * b[i], out2[c] likewise with w2, b2. */
static inline void cols_times(const float *w, const float *b, int64_t bs, float *out, const float *w2, const float *b2,
                              int64_t b2s, float *out2, int64_t os, int tp, int j0, int T, int cols) {
    vf acc[R][NV], acc2[R][NV];
    for (int c = 0; c < R; c++) for (int v = 0; v < NV; v++) { acc[c][v] = splat(0.0f); acc2[c][v] = splat(0.0f); }
    for (int i = j0; i < T; i++) {
        vf bi[NV], b2i[NV];
        for (int v = 0; v < NV; v++) { bi[v] = load(b + i * bs + v * VL); b2i[v] = load(b2 + i * b2s + v * VL); }
        for (int c = 0; c < R; c++) {
            vf wc = splat(w[i * tp + j0 + c]), w2c = splat(w2[i * tp + j0 + c]);
            for (int v = 0; v < NV; v++) { acc[c][v] += wc * bi[v]; acc2[c][v] += w2c * b2i[v]; }
        }
    }
    for (int c = 0; c < cols; c++) for (int v = 0; v < NV; v++) {
        store(out + c * os + v * VL, acc[c][v]);
        store(out2 + c * os + v * VL, acc2[c][v]);
    }
}

/* Ask for rows [T, HS] (stride xs) to be in cache: the next pair's, while this one computes. */
static inline void prefetch(const float *x, int64_t xs, int T, int write) {
    for (int j = 0; j < T; j++)
        for (int c = 0; c < HS; c += LINE) {
            if (write) __builtin_prefetch(x + j * xs + c, 1, 3);
            else __builtin_prefetch(x + j * xs + c, 0, 3);
        }
}

int attention_head_size(void) { return HS; }

int attention_forward(const float *qkv, float *out, float *probs, const int64_t *dropped, int64_t n_dropped,
                      int64_t B, int64_t T, int64_t H, float alpha, float keep_scale, int threads) {
    const int64_t C = H * HS, row = 3 * C, tt = tri(T);
    const int tp = (int)((T + VL - 1) / VL * VL);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* kt [HS, tp] (k transposed), s and w [R, tp] (scores, weights), pad [R, HS] */
        float *kt = malloc(sizeof(float) * ((int64_t)HS * tp + 2 * R * tp + R * HS));
        if (!kt) {
#pragma omp atomic write
            failed = 1;
        }
        float *s = kt + (int64_t)HS * tp, *w = s + R * tp, *pad = w + R * tp;
        if (kt) memset(kt, 0, sizeof(float) * HS * tp);
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < B * H; pair++) {
            if (!kt) continue;
            const int64_t b = pair / H, h = pair % H, base = pair * tt, dense = pair * T * T;
            const float *q = qkv + b * T * row + h * HS, *k = q + C, *v = q + 2 * C;
            float *o = out + b * T * C + h * HS;
            if (pair + 1 < B * H) {
                const int64_t b1 = (pair + 1) / H, h1 = (pair + 1) % H;
                const float *q1 = qkv + b1 * T * row + h1 * HS;
                prefetch(q1, row, (int)T, 0); prefetch(q1 + C, row, (int)T, 0); prefetch(q1 + 2 * C, row, (int)T, 0);
                prefetch(out + b1 * T * C + h1 * HS, C, (int)T, 1);
            }
            transpose(k, row, (int)T, kt, tp);
            int64_t next = lower_bound(dropped, n_dropped, dense);
            for (int i0 = 0; i0 < T; i0 += R) {
                const int rows = T - i0 < R ? (int)(T - i0) : R, n_max = i0 + rows;
                const int chunks = (n_max + VL - 1) / VL;
                rows_times_t(rows < R ? padded(q + i0 * row, row, rows, pad) : q + i0 * row, rows < R ? HS : row,
                             kt, tp, chunks, s);
                for (int r = 0; r < rows; r++) {
                    const int i = i0 + r, n = i + 1;
                    float *sr = s + r * tp, *wr = w + r * tp, *p = probs + base + tri(i);
                    const float inv = softmax_exps(sr, n, chunks, alpha), kept = inv * keep_scale;
                    int j0 = 0;
                    for (; j0 < chunks * VL; j0 += VL) {
                        const vf e = load(sr + j0);
                        store(wr + j0, e * kept);
                        if (j0 + VL <= n) store(p + j0, e * inv); /* whole vectors inside row i only */
                    }
                    for (j0 = n / VL * VL; j0 < n; j0++) p[j0] = sr[j0] * inv;
                    const int64_t start = dense + (int64_t)i * T, end = start + n;
                    for (; next < n_dropped && dropped[next] < end; next++)
                        if (dropped[next] >= start) wr[dropped[next] - start] = 0.0f;
                }
                rows_times(w, tp, n_max, v, row, o + i0 * C, C, rows);
            }
        }
        free(kt);
    }
    return failed ? -1 : 0;
}

int attention_backward(const float *qkv, const float *out, const float *probs, const float *grad, float *grad_qkv,
                       const int64_t *dropped, int64_t n_dropped, int64_t B, int64_t T, int64_t H, float alpha,
                       float keep_scale, int threads) {
    const int64_t C = H * HS, row = 3 * C, tt = tri(T);
    const int tp = (int)((T + VL - 1) / VL * VL), Tr = (int)((T + R - 1) / R * R);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* vt [HS, tp] (v transposed), ds and w [Tr, tp] (dS and W, zero above the diagonal), pad [R, HS] */
        const int64_t square = (int64_t)Tr * tp;
        float *vt = malloc(sizeof(float) * ((int64_t)HS * tp + 2 * square + R * HS));
        if (!vt) {
#pragma omp atomic write
            failed = 1;
        }
        float *ds = vt + (int64_t)HS * tp, *w = ds + square, *pad = w + square;
        if (vt) memset(vt, 0, sizeof(float) * ((int64_t)HS * tp + 2 * square));
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < B * H; pair++) {
            if (!vt) continue;
            const int64_t b = pair / H, h = pair % H, base = pair * tt, dense = pair * T * T;
            const float *q = qkv + b * T * row + h * HS, *k = q + C, *v = q + 2 * C;
            const float *o = out + b * T * C + h * HS, *g = grad + b * T * C + h * HS;
            float *gq = grad_qkv + b * T * row + h * HS, *gk = gq + C, *gv = gq + 2 * C;
            if (pair + 1 < B * H) {
                const int64_t b1 = (pair + 1) / H, h1 = (pair + 1) % H;
                const float *q1 = qkv + b1 * T * row + h1 * HS;
                float *gq1 = grad_qkv + b1 * T * row + h1 * HS;
                prefetch(q1, row, (int)T, 0); prefetch(q1 + C, row, (int)T, 0); prefetch(q1 + 2 * C, row, (int)T, 0);
                prefetch(out + b1 * T * C + h1 * HS, C, (int)T, 0); prefetch(grad + b1 * T * C + h1 * HS, C, (int)T, 0);
                prefetch(gq1, row, (int)T, 1); prefetch(gq1 + C, row, (int)T, 1); prefetch(gq1 + 2 * C, row, (int)T, 1);
            }
            transpose(v, row, (int)T, vt, tp);
            int64_t next = lower_bound(dropped, n_dropped, dense);
            for (int i0 = 0; i0 < T; i0 += R) {
                const int rows = T - i0 < R ? (int)(T - i0) : R, n_max = i0 + rows;
                const int chunks = (n_max + VL - 1) / VL;
                float *dsr0 = ds + (int64_t)i0 * tp; /* g v^T first, then dS in place */
                rows_times_t(rows < R ? padded(g + i0 * C, C, rows, pad) : g + i0 * C, rows < R ? HS : C, vt, tp,
                             chunks, dsr0);
                for (int r = 0; r < rows; r++) {
                    const int i = i0 + r, n = i + 1;
                    const float *gi = g + i * C, *oi = o + i * C, *p = probs + base + tri(i);
                    vf dot = splat(0.0f);
                    for (int c = 0; c < NV; c++) dot += load(gi + c * VL) * load(oi + c * VL);
                    const float d = hsum(dot);
                    float *dsr = ds + (int64_t)i * tp, *wr = w + (int64_t)i * tp;
                    for (int j = 0; j < n; j++) {
                        dsr[j] = p[j] * (dsr[j] * keep_scale - d) * alpha;
                        wr[j] = p[j] * keep_scale;
                    }
                    for (int j = n; j < chunks * VL; j++) dsr[j] = wr[j] = 0.0f;
                    const int64_t start = dense + (int64_t)i * T, end = start + n;
                    for (; next < n_dropped && dropped[next] < end; next++) {
                        if (dropped[next] < start) continue;
                        const int64_t j = dropped[next] - start;
                        dsr[j] = -p[j] * d * alpha;
                        wr[j] = 0.0f;
                    }
                }
                rows_times(dsr0, tp, n_max, k, row, gq + i0 * row, row, rows); /* dq = dS k */
            }
            for (int j0 = 0; j0 < T; j0 += R) /* dk = dS^T q, dv = W^T g */
                cols_times(ds, q, row, gk + j0 * row, w, g, C, gv + j0 * row, row, tp, j0, (int)T,
                           T - j0 < R ? (int)(T - j0) : R);
        }
        free(vt);
    }
    return failed ? -1 : 0;
}
