/* Native CPU kernels for the KA / KAonv layers' basis passes (uniform grid, one family of bases), see native.py.
 *
 * Compiled twice into one shared library, once as is (float, names ending in _f) and once with -DKA_DOUBLE
 * (double, names ending in _d), and called through ctypes by the torch operators of native.py, which check
 * shapes, dtypes and contiguity first. Each kernel is one pass over its input; the inner loops run over
 * contiguous positions so the compiler vectorises them.
 *
 * The basis families (splines.py has their Python definitions), each defined once below (family_term_*), of the
 * scaled input s = (x - t0) / h and u = s - k - centre, times a constant factor applied once per sum after the
 * channel loop together with the padding shift (C_g B(0), ka.py):
 *     cubic B-spline (centre 2):   6 B_k = relu(2 - |u|)^3 - 4 relu(1 - |u|)^3          factor 1/6
 *     quadratic B-spline (1.5):    2 B_k = relu(3/2 - |u|)^2 - 3 relu(1/2 - |u|)^2      factor 1/2
 *     linear B-spline (centre 1):    B_k = relu(1 - |u|)                                 factor 1
 *     rbf (centre (p + 1) / 2):      B_k = exp(-u^2)                                     factor 1
 *     relu (centre c = (p + 1) / 2): B_k c^4 = relu(c^2 - u^2)^2                          factor 1 / c^4
 *     chebyshev (t0, h: the centre and half-width of the range): B_k = T_k(tanh s) by T_{k+1} = 2 z T_k - T_{k-1}
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#ifdef KA_DOUBLE
#define REAL double
#define SFX(name) name##_d
#define EXP exp
#define FABS fabs
#define TANH tanh
#else
#define REAL float
#define SFX(name) name##_f
#define EXP expf
#define FABS fabsf
#define TANH tanhf
#endif

/* The constants native.py needs come from here (ka_constants); the loader refuses a library of another ABI. */
#define KA_ABI 4
#define BLOCK 512   /* positions per work item: the accumulators of 8 bases stay in L1 */
#define MAX_BASES 32

#ifndef KA_DOUBLE
/* out = {ABI version, MAX_BASES, BLOCK} */
void ka_constants(int64_t *out) { out[0] = KA_ABI; out[1] = MAX_BASES; out[2] = BLOCK; }
#endif

typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);

/* Items [0, total) of one parallel pass, claimed in chunks by whichever thread is free: a thread that starts late
 * (asleep, or descheduled behind another process) finds its share already taken instead of holding up the pass. */
typedef struct { range_fn fn; void *ctx; int64_t total, chunk, next, helped; } shared_work;

#define CHUNKS_PER_THREAD 4
#define MAX_SOLO 64

static void claim_and_run(shared_work *w, int helper) {
    int64_t begin, claimed = 0;
    while ((begin = __atomic_fetch_add(&w->next, w->chunk, __ATOMIC_RELAXED)) < w->total) {
        w->fn(w->ctx, begin, begin + w->chunk < w->total ? begin + w->chunk : w->total);
        claimed++;
    }
    if (helper && claimed) __atomic_store_n(&w->helped, 1, __ATOMIC_RELAXED);
}

/* A pass whose helper threads claimed nothing (the calling thread had taken every chunk before any of them ran)
 * only waited for them at its end: on a machine where other processes hold the cores, that wait is a scheduler
 * time slice. After such a pass the next 2, then 4, ... up to MAX_SOLO passes run on the calling thread alone;
 * a pass that the helpers do share resets the count. Shared by all callers without a lock: a lost update only
 * moves the next try. */
#ifdef KA_DOUBLE
extern int64_t ka_solo_left, ka_solo_run;
#else
int64_t ka_solo_left = 0, ka_solo_run = 0;  /* one state for both precisions, exported for the tests */
#endif

static int run_solo(void) {
    if (__atomic_load_n(&ka_solo_left, __ATOMIC_RELAXED) <= 0) return 0;
    __atomic_fetch_sub(&ka_solo_left, 1, __ATOMIC_RELAXED);
    return 1;
}

static void record_help(int helped) {
    int64_t run = 0;
    if (!helped) {
        run = __atomic_load_n(&ka_solo_run, __ATOMIC_RELAXED);
        run = run ? (2 * run < MAX_SOLO ? 2 * run : MAX_SOLO) : 2;
    }
    __atomic_store_n(&ka_solo_run, run, __ATOMIC_RELAXED);
    __atomic_store_n(&ka_solo_left, run, __ATOMIC_RELAXED);
}

#ifdef _OPENMP
#include <omp.h>
/* Items [0, total) on up to n_threads threads. OpenMP resolves to the runtime torch already loaded (same soname),
 * so the chunks run on torch's own worker threads: threads of our own would compete with those workers, which
 * spin for a while after each of torch's parallel regions. */
static void parallel_for(range_fn fn, void *ctx, int64_t total, int64_t n_threads) {
    if (n_threads > total) n_threads = total;
    if (n_threads <= 1 || run_solo()) { fn(ctx, 0, total); return; }
    shared_work w = {fn, ctx, total, (total + n_threads * CHUNKS_PER_THREAD - 1) / (n_threads * CHUNKS_PER_THREAD),
                     0, 0};
    int team = 1;
#pragma omp parallel num_threads((int)n_threads)
    {
        if (omp_get_thread_num() == 0) team = omp_get_num_threads();
        claim_and_run(&w, omp_get_thread_num() != 0);
    }
    if (team > 1) record_help((int)w.helped);  /* a nested call gets a team of one: nothing learnt */
}
#else
static void *run_helper(void *arg) {
    claim_and_run((shared_work *)arg, 1);
    return NULL;
}

/* Without OpenMP: items [0, total) on the caller's thread and up to n_threads - 1 threads started for the pass. */
static void parallel_for(range_fn fn, void *ctx, int64_t total, int64_t n_threads) {
    if (n_threads > total) n_threads = total;
    if (n_threads <= 1 || run_solo()) { fn(ctx, 0, total); return; }
    if (n_threads > 64) n_threads = 64;
    shared_work w = {fn, ctx, total, (total + n_threads * CHUNKS_PER_THREAD - 1) / (n_threads * CHUNKS_PER_THREAD),
                     0, 0};
    pthread_t threads[64];
    int started[64];
    for (int64_t t = 1; t < n_threads; t++) started[t] = pthread_create(&threads[t], NULL, run_helper, &w) == 0;
    claim_and_run(&w, 0);
    for (int64_t t = 1; t < n_threads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
    record_help((int)w.helped);
}
#endif

/* Work item -> its row n and block of positions [p0, p0 + len) (blocks of BLOCK positions per row). */
typedef struct { int64_t n, p0, len; } block_item;

static inline int64_t block_count(int64_t positions) { return (positions + BLOCK - 1) / BLOCK; }

static inline block_item block_of(int64_t item, int64_t positions) {
    const int64_t blocks = block_count(positions);
    block_item b;
    b.n = item / blocks;
    b.p0 = (item % blocks) * BLOCK;
    b.len = positions - b.p0 < BLOCK ? positions - b.p0 : BLOCK;
    return b;
}

static inline REAL SFX(silu_of)(REAL v) { return v / ((REAL)1 + EXP(-v)); }

/* Family ids (native.py's FAMILIES). */
#define KA_CUBIC 0
#define KA_RBF 1
#define KA_CHEBYSHEV 2
#define KA_RELU 3
#define KA_LINEAR 4
#define KA_QUADRATIC 5

/* The grid as the kernels see it: family, s = (x - t0) * inv_h, basis k centred at s = k + centre. */
typedef struct { int family; REAL t0, inv_h, centre; } SFX(grid);

static inline REAL SFX(family_term_cubic)(REAL u) {
    REAL t = FABS(u), p = (REAL)2 - t, q = (REAL)1 - t;
    p = p > 0 ? p : 0;
    q = q > 0 ? q : 0;
    return p * p * p - (REAL)4 * q * q * q;
}
static inline REAL SFX(family_term_quadratic)(REAL u) {
    REAL t = FABS(u), p = (REAL)1.5 - t, q = (REAL)0.5 - t;
    p = p > 0 ? p : 0;
    q = q > 0 ? q : 0;
    return p * p - (REAL)3 * q * q;
}
static inline REAL SFX(family_term_linear)(REAL u) {
    REAL p = (REAL)1 - FABS(u);
    return p > 0 ? p : 0;
}
static inline REAL SFX(family_term_rbf)(REAL u) { return EXP(-u * u); }
static inline REAL SFX(family_term_relu)(REAL u, REAL c2) {
    REAL b = c2 - u * u;
    b = b > 0 ? b : 0;
    return b * b;
}

/* The factor applied after the sums. */
static inline REAL SFX(family_scale)(SFX(grid) g) {
    if (g.family == KA_CUBIC) return (REAL)(1.0 / 6.0);
    if (g.family == KA_QUADRATIC) return (REAL)0.5;
    if (g.family == KA_RELU) return (REAL)1 / (g.centre * g.centre * g.centre * g.centre);
    return (REAL)1;
}

/* acc[k][i] += term_k(x[i]) for i < len, every basis k: the scaled input s[] (tanh s for chebyshev) in z. */
static void SFX(add_terms)(const REAL *z, int64_t len, int n_bases, SFX(grid) g, REAL acc[][BLOCK]) {
    if (g.family == KA_CHEBYSHEV) {
        REAL prev[BLOCK], cur[BLOCK];
        for (int64_t i = 0; i < len; i++) { prev[i] = 1; cur[i] = z[i]; acc[0][i] += 1; }
        if (n_bases > 1) for (int64_t i = 0; i < len; i++) acc[1][i] += z[i];
        for (int k = 2; k < n_bases; k++) {
            REAL *a = acc[k];
            for (int64_t i = 0; i < len; i++) {
                const REAL next = (REAL)2 * z[i] * cur[i] - prev[i];
                prev[i] = cur[i];
                cur[i] = next;
                a[i] += next;
            }
        }
        return;
    }
    const REAL c2 = g.centre * g.centre;
    for (int k = 0; k < n_bases; k++) {
        REAL *a = acc[k];
        const REAL shift = (REAL)k + g.centre;
        switch (g.family) {  /* one loop per family, so that each vectorises */
        case KA_CUBIC: for (int64_t i = 0; i < len; i++) a[i] += SFX(family_term_cubic)(z[i] - shift); break;
        case KA_QUADRATIC: for (int64_t i = 0; i < len; i++) a[i] += SFX(family_term_quadratic)(z[i] - shift); break;
        case KA_LINEAR: for (int64_t i = 0; i < len; i++) a[i] += SFX(family_term_linear)(z[i] - shift); break;
        case KA_RBF: for (int64_t i = 0; i < len; i++) a[i] += SFX(family_term_rbf)(z[i] - shift); break;
        default: for (int64_t i = 0; i < len; i++) a[i] += SFX(family_term_relu)(z[i] - shift, c2); break;
        }
    }
}

/* z[i] = the input of add_terms for x[i], i < len. */
static inline void SFX(scaled)(const REAL *x, REAL *z, int64_t len, SFX(grid) g) {
    if (g.family == KA_CHEBYSHEV) for (int64_t i = 0; i < len; i++) z[i] = TANH((x[i] - g.t0) * g.inv_h);
    else for (int64_t i = 0; i < len; i++) z[i] = (x[i] - g.t0) * g.inv_h;
}

/* acc[k][i] = sum_c B_k(x[c, i]) / scale for i < len (x rows of stride `stride`); silu(x) written when
 * silu != NULL. */
static void SFX(block_basis_sums)(const REAL *x, REAL *silu, int64_t channels, int64_t stride, int64_t len,
                                  int n_bases, SFX(grid) g, REAL acc[][BLOCK]) {
    REAL s[BLOCK];
    for (int k = 0; k < n_bases; k++) memset(acc[k], 0, sizeof(REAL) * (size_t)len);
    for (int64_t c = 0; c < channels; c++) {
        const REAL *xr = x + c * stride;
        if (silu) {
            REAL *out = silu + c * stride;
            for (int64_t i = 0; i < len; i++) out[i] = SFX(silu_of)(xr[i]);
        }
        SFX(scaled)(xr, s, len, g);
        SFX(add_terms)(s, len, n_bases, g, acc);
    }
}

/* ---- basis sums: x [N, C, P] -> sums [N, n_bases, P] = sum_c B_k(x) - shift[k], silu(x) optionally ------------ */
typedef struct {
    const REAL *x; REAL *silu; REAL *sums;
    int64_t channels, positions, sums_batch_stride, silu_batch_stride;
    int n_bases; SFX(grid) g; const double *shift;
} SFX(sums_ctx);

static void SFX(sums_range)(void *vctx, int64_t begin, int64_t end) {
    SFX(sums_ctx) *c = (SFX(sums_ctx) *)vctx;
    REAL acc[MAX_BASES][BLOCK];
    for (int64_t item = begin; item < end; item++) {
        const block_item b = block_of(item, c->positions);
        const int64_t n = b.n, p0 = b.p0, len = b.len;
        const REAL *x = c->x + n * c->channels * c->positions + p0;
        REAL *silu = c->silu ? c->silu + n * c->silu_batch_stride + p0 : NULL;
        SFX(block_basis_sums)(x, silu, c->channels, c->positions, len, c->n_bases, c->g, acc);
        const REAL scale = SFX(family_scale)(c->g);
        for (int k = 0; k < c->n_bases; k++) {
            REAL *out = c->sums + n * c->sums_batch_stride + k * c->positions + p0;
            const REAL shift = (REAL)c->shift[k];
            for (int64_t i = 0; i < len; i++) out[i] = acc[k][i] * scale - shift;
        }
    }
}

/* One position per row (P == 1, e.g. KALinear's tokens): vectorise over channels instead. */
static void SFX(sums_rows_range)(void *vctx, int64_t begin, int64_t end) {
    SFX(sums_ctx) *c = (SFX(sums_ctx) *)vctx;
    REAL s[BLOCK], acc[MAX_BASES][BLOCK];
    const REAL scale = SFX(family_scale)(c->g);
    for (int64_t n = begin; n < end; n++) {
        const REAL *x = c->x + n * c->channels;
        REAL *silu = c->silu ? c->silu + n * c->silu_batch_stride : NULL;
        REAL total[MAX_BASES];
        for (int k = 0; k < c->n_bases; k++) total[k] = 0;
        for (int64_t c0 = 0; c0 < c->channels; c0 += BLOCK) {
            const int64_t len = c->channels - c0 < BLOCK ? c->channels - c0 : BLOCK;
            if (silu) for (int64_t i = 0; i < len; i++) silu[c0 + i] = SFX(silu_of)(x[c0 + i]);
            SFX(scaled)(x + c0, s, len, c->g);
            if (c->g.family != KA_CHEBYSHEV) {  /* one reduction loop per family, as in add_terms */
                const REAL c2 = c->g.centre * c->g.centre;
                for (int k = 0; k < c->n_bases; k++) {
                    const REAL shift = (REAL)k + c->g.centre;
                    REAL sum = 0;
                    switch (c->g.family) {
                    case KA_CUBIC: for (int64_t i = 0; i < len; i++) sum += SFX(family_term_cubic)(s[i] - shift); break;
                    case KA_QUADRATIC:
                        for (int64_t i = 0; i < len; i++) sum += SFX(family_term_quadratic)(s[i] - shift);
                        break;
                    case KA_LINEAR:
                        for (int64_t i = 0; i < len; i++) sum += SFX(family_term_linear)(s[i] - shift);
                        break;
                    case KA_RBF: for (int64_t i = 0; i < len; i++) sum += SFX(family_term_rbf)(s[i] - shift); break;
                    default: for (int64_t i = 0; i < len; i++) sum += SFX(family_term_relu)(s[i] - shift, c2); break;
                    }
                    total[k] += sum;
                }
                continue;
            }
            for (int k = 0; k < c->n_bases; k++) memset(acc[k], 0, sizeof(REAL) * (size_t)len);
            SFX(add_terms)(s, len, c->n_bases, c->g, acc);
            for (int k = 0; k < c->n_bases; k++) {
                REAL sum = 0;
                for (int64_t i = 0; i < len; i++) sum += acc[k][i];
                total[k] += sum;
            }
        }
        for (int k = 0; k < c->n_bases; k++)
            c->sums[n * c->sums_batch_stride + k] = total[k] * scale - (REAL)c->shift[k];
    }
}

void SFX(ka_basis_sums)(const REAL *x, REAL *silu, REAL *sums, int64_t batch, int64_t channels, int64_t positions,
                        int64_t silu_batch_stride, int64_t sums_batch_stride, int n_bases, int family, double t0,
                        double h, double centre, const double *shift, int64_t n_threads) {
    SFX(sums_ctx) ctx = {x, silu, sums, channels, positions, sums_batch_stride, silu_batch_stride, n_bases,
                         {family, (REAL)t0, (REAL)(1.0 / h), (REAL)centre}, shift};
    if (positions == 1) parallel_for(SFX(sums_rows_range), &ctx, batch, n_threads);
    else parallel_for(SFX(sums_range), &ctx, batch * block_count(positions), n_threads);
}

/* ---- window sums: s [M, D, H, W] -> out [M, Do, Ho, Wo], zero-padded sums over a convolution's taps, plus
 *      start[m % period] (when start != NULL) ---------------------------------------------------------------- */
typedef struct {
    const REAL *s; REAL *out; const double *start; int64_t period;
    int64_t d, h, w, od, oh, ow;
    int64_t k[3], stride[3], pad[3], dil[3];
} SFX(window_ctx);

static void SFX(window_range)(void *vctx, int64_t begin, int64_t end) {
    SFX(window_ctx) *c = (SFX(window_ctx) *)vctx;
    for (int64_t row = begin; row < end; row++) {  /* row = (m, z, y) of the output */
        const int64_t y = row % c->oh, z = (row / c->oh) % c->od, m = row / (c->oh * c->od);
        REAL *out = c->out + row * c->ow;
        const REAL start = c->start ? (REAL)c->start[m % c->period] : (REAL)0;
        for (int64_t x = 0; x < c->ow; x++) out[x] = start;
        for (int64_t tz = 0; tz < c->k[0]; tz++) {
            const int64_t iz = z * c->stride[0] + tz * c->dil[0] - c->pad[0];
            if (iz < 0 || iz >= c->d) continue;
            for (int64_t ty = 0; ty < c->k[1]; ty++) {
                const int64_t iy = y * c->stride[1] + ty * c->dil[1] - c->pad[1];
                if (iy < 0 || iy >= c->h) continue;
                const REAL *in = c->s + ((m * c->d + iz) * c->h + iy) * c->w;
                for (int64_t tx = 0; tx < c->k[2]; tx++) {
                    const int64_t off = tx * c->dil[2] - c->pad[2], sx = c->stride[2];
                    /* output columns whose input column x * sx + off lies in [0, w) */
                    int64_t lo = off >= 0 ? 0 : (-off + sx - 1) / sx;
                    int64_t hi = c->w - 1 - off < 0 ? 0 : (c->w - 1 - off) / sx + 1;
                    if (hi > c->ow) hi = c->ow;
                    if (sx == 1) for (int64_t x = lo; x < hi; x++) out[x] += in[x + off];
                    else for (int64_t x = lo; x < hi; x++) out[x] += in[x * sx + off];
                }
            }
        }
    }
}

void SFX(ka_window_sums)(const REAL *s, REAL *out, const double *start, int64_t period, int64_t maps,
                         const int64_t *in_size, const int64_t *out_size, const int64_t *kernel,
                         const int64_t *stride, const int64_t *padding, const int64_t *dilation, int64_t n_threads) {
    SFX(window_ctx) ctx = {s, out, start, period, in_size[0], in_size[1], in_size[2], out_size[0], out_size[1], out_size[2],
                           {kernel[0], kernel[1], kernel[2]}, {stride[0], stride[1], stride[2]},
                           {padding[0], padding[1], padding[2]}, {dilation[0], dilation[1], dilation[2]}};
    parallel_for(SFX(window_range), &ctx, maps * out_size[0] * out_size[1], n_threads);
}

/* ---- one output per group (depthwise): x [B*G, C, P], v [G, nb] -> phi [B*G, P] = sum_k v_k (S_k - shift_k) ---- */
typedef struct {
    const REAL *x, *v; REAL *silu, *phi; const REAL *grad_silu, *grad_phi; REAL *grad_x; double *grad_v;
    int64_t groups, channels, positions;
    int n_bases; SFX(grid) g; const double *shift;
} SFX(activation_ctx);

static void SFX(activation_range)(void *vctx, int64_t begin, int64_t end) {
    SFX(activation_ctx) *c = (SFX(activation_ctx) *)vctx;
    REAL acc[MAX_BASES][BLOCK];
    for (int64_t item = begin; item < end; item++) {
        const block_item b = block_of(item, c->positions);
        const int64_t n = b.n, p0 = b.p0, len = b.len, g = n % c->groups;
        const int64_t base = n * c->channels * c->positions + p0;
        SFX(block_basis_sums)(c->x + base, c->silu + base, c->channels, c->positions, len, c->n_bases, c->g, acc);
        REAL *phi = c->phi + n * c->positions + p0;
        REAL constant = 0;
        for (int k = 0; k < c->n_bases; k++) constant += c->v[g * c->n_bases + k] * (REAL)c->shift[k];
        for (int64_t i = 0; i < len; i++) phi[i] = -constant;
        for (int k = 0; k < c->n_bases; k++) {
            const REAL w = c->v[g * c->n_bases + k] * SFX(family_scale)(c->g);
            for (int64_t i = 0; i < len; i++) phi[i] += w * acc[k][i];
        }
    }
}

void SFX(ka_activation_sums)(const REAL *x, const REAL *v, REAL *silu, REAL *phi, int64_t batch, int64_t groups,
                             int64_t channels, int64_t positions, int n_bases, int family, double t0, double h,
                             double centre, const double *shift, int64_t n_threads) {
    SFX(activation_ctx) ctx = {x, v, silu, phi, NULL, NULL, NULL, NULL, groups, channels, positions, n_bases,
                               {family, (REAL)t0, (REAL)(1.0 / h), (REAL)centre}, shift};
    parallel_for(SFX(activation_range), &ctx, batch * groups * block_count(positions), n_threads);
}

/* Backward of ka_activation_sums without the spline path's x gradient (grad-free): grad_x = grad_silu * silu'(x),
 * grad_v_parts[item, k] = sum_i grad_phi * (S_k - shift_k) over the item's positions (double; summed by the caller). */
static void SFX(activation_backward_range)(void *vctx, int64_t begin, int64_t end) {
    SFX(activation_ctx) *c = (SFX(activation_ctx) *)vctx;
    REAL acc[MAX_BASES][BLOCK];
    for (int64_t item = begin; item < end; item++) {
        const block_item b = block_of(item, c->positions);
        const int64_t n = b.n, p0 = b.p0, len = b.len;
        const int64_t base = n * c->channels * c->positions + p0;
        for (int64_t ch = 0; ch < c->channels; ch++) {
            const REAL *xr = c->x + base + ch * c->positions, *gs = c->grad_silu + base + ch * c->positions;
            REAL *gx = c->grad_x + base + ch * c->positions;
            for (int64_t i = 0; i < len; i++) {
                const REAL sig = (REAL)1 / ((REAL)1 + EXP(-xr[i]));
                gx[i] = gs[i] * sig * ((REAL)1 + xr[i] * ((REAL)1 - sig));
            }
        }
        SFX(block_basis_sums)(c->x + base, NULL, c->channels, c->positions, len, c->n_bases, c->g, acc);
        const REAL *gp = c->grad_phi + n * c->positions + p0;
        double *out = c->grad_v + item * c->n_bases;
        const double scale = (double)SFX(family_scale)(c->g);
        for (int k = 0; k < c->n_bases; k++) {
            REAL dot = 0, gsum = 0;
            for (int64_t i = 0; i < len; i++) { dot += gp[i] * acc[k][i]; gsum += gp[i]; }
            out[k] = (double)dot * scale - (double)gsum * c->shift[k];
        }
    }
}

void SFX(ka_activation_sums_backward)(const REAL *x, const REAL *grad_silu, const REAL *grad_phi, REAL *grad_x,
                                      double *grad_v_parts, int64_t batch, int64_t groups, int64_t channels,
                                      int64_t positions, int n_bases, int family, double t0, double h, double centre,
                                      const double *shift, int64_t n_threads) {
    SFX(activation_ctx) ctx = {x, NULL, NULL, NULL, grad_silu, grad_phi, grad_x, grad_v_parts, groups, channels,
                               positions, n_bases, {family, (REAL)t0, (REAL)(1.0 / h), (REAL)centre}, shift};
    parallel_for(SFX(activation_backward_range), &ctx, batch * groups * block_count(positions),
                 n_threads);
}
