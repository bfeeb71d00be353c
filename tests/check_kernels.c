/* tests/check_kernels.c — the CPU kernel layer (llm/kernels.h); the thread
 * pool is tests/check_pool.c, the choice of instruction set tests/check_isa.c.
 *
 * Every kernel table this CPU can run is checked against references written
 * here, not against kern_scalar.c:
 *   - int8 paths bit for bit: quant_rows against lm_quantize_row_ref (itself
 *     checked against the definition in exact arithmetic), and qgemm against
 *     its documented float steps, (float)acc * (s[r] * scale[c]) + bias[c]
 *     then old + v, on int32 sums taken from the row-major weights;
 *   - fp32 paths against double-precision references, with tolerances scaled
 *     by the magnitudes that entered each result, and SIMD against scalar.
 * Outputs sit between guard rows with padded leading dimensions, inputs carry
 * POISON past their rows, and one test puts every buffer's end against an
 * inaccessible page, so a kernel that touches what it was not given fails in
 * the plain build, not only under ASan.
 *
 * Inputs come from a fixed-seed xorshift generator, one stream per test, so
 * a failure reproduces alone (CK_RUN_CASE=fp32 ./build/tests/check_kernels).
 * Each kernel and ISA prints one line: what was compared, the largest error.
 * The file is long because the interface is wide; its sections follow
 * llm/kernels.h. */
#include "llm/kernels.h"
#include "llm/pool.h"

#include "common/err.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SEED 0x6b8b4567327b23c6ull

/* fp32 tolerance: relative to the sum of the magnitudes that entered a
 * result, plus an absolute floor. */
#define REL_TOL 1e-5
#define ABS_TOL 1e-6

/* Preset in every cell a kernel must not write; finite, so that a kernel
 * that wrongly accumulates into a guard cell changes it. */
#define GUARD (-31337.25f)

/* Stored past the end of input rows: a kernel that reads it goes far wrong. */
#define POISON 1e30f

#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Check's ck_assert_* report a checkpoint to the runner on every pass, one
 * system call each; inner loops test first and fail through ck_abort_msg. */
#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond))                                                                     \
            ck_abort_msg(__VA_ARGS__);                                                   \
    } while (0)

/* ---- random numbers, buffers, comparisons ---------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) /* xorshift64* */
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

/* One stream per test (and ISA): a test's inputs do not depend on which
 * tests ran before it. */
static rng rng_stream(uint64_t stream)
{
    rng r = {SEED ^ ((stream + 1) * 0x9e3779b97f4a7c15ull)};
    if (!r.s)
        r.s = SEED;
    for (int i = 0; i < 4; i++)
        rng_next(&r);
    return r;
}

static int rng_int(rng *r, int lo, int hi) /* inclusive */
{
    return lo + (int)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

static float rng_f(rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(rng_next(r) >> 40) * 0x1p-24);
}

static int8_t rng_i8(rng *r) { return (int8_t)rng_int(r, -127, 127); }

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    CHECK(p != NULL, "malloc(%zu) failed", bytes);
    return p;
}

/* Packed weights promise 64-byte alignment. Their sizes are multiples of 64
 * already, so rounding up for aligned_alloc leaves ASan the exact end. */
static void *alloc64(size_t bytes)
{
    size_t sz = bytes < 64 ? 64 : (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, sz);
    CHECK(p != NULL, "aligned_alloc(64, %zu) failed", sz);
    return p;
}

/* A row-major float matrix [M, ld] holding POISON in columns n..ld-1. */
static float *matrix_new(rng *r, int M, int n, int ld, float lo, float hi)
{
    float *m = xmalloc((size_t)M * (size_t)ld * sizeof(float));
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ld; j++)
            m[(size_t)i * ld + j] = j < n ? rng_f(r, lo, hi) : POISON;
    return m;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static int same_f32(float a, float b) { return f32_bits(a) == f32_bits(b); }

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* The table for `isa`, or NULL after saying that this CPU cannot run it. */
static const lm_kern *kern_or_skip(int isa, const char *kernel)
{
    const lm_kern *k = lm_kern_get((lm_isa)isa);
    if (!k)
        say("%-10s %-7s: not available on this CPU (lm_isa_detect: %s), skipped", kernel,
            lm_isa_name((lm_isa)isa), lm_isa_name(lm_isa_detect()));
    return k;
}

/* An output matrix [M, ldy] between two guard rows. Every cell starts as
 * GUARD; with `old`, the result cells [M, n] start random instead, for
 * kernels that accumulate. */
typedef struct outbuf {
    float *base; /* [(M + 2) * ldy] */
    float *y;    /* base + ldy */
    int M, n, ldy;
} outbuf;

static outbuf outbuf_new(rng *r, int M, int n, int ldy, int old)
{
    outbuf o = {.M = M, .n = n, .ldy = ldy};
    size_t cells = (size_t)(M + 2) * (size_t)ldy;
    o.base = xmalloc(cells * sizeof(float));
    for (size_t i = 0; i < cells; i++)
        o.base[i] = GUARD;
    o.y = o.base + ldy;
    for (int i = 0; old && i < M; i++)
        for (int j = 0; j < n; j++)
            o.y[(size_t)i * ldy + j] = rng_f(r, -4.0f, 4.0f);
    return o;
}

static void check_guards(const outbuf *o, const char *where)
{
    for (int i = -1; i <= o->M; i++)
        for (int j = 0; j < o->ldy; j++) {
            float v = o->y[(ptrdiff_t)i * o->ldy + j];
            CHECK(i >= 0 && i < o->M && j < o->n ? 1 : same_f32(v, GUARD),
                  "%s: y[%d][%d], outside the [%d, %d] result (ldy %d), was written: %.9g",
                  where, i, j, o->M, o->n, o->ldy, (double)v);
        }
}

/* The largest error seen, absolute and as a fraction of its tolerance. */
typedef struct errstat {
    double max_abs, max_ratio;
} errstat;

/* Fails unless |got - want| <= tol (NaN fails too), naming `where` (kernel,
 * ISA, sizes) and the element; records the error. */
static void check_close(errstat *e, const char *where, int i, int j, double got, double want,
                        double tol)
{
    double d = fabs(got - want);
    CHECK(d <= tol, "%s: [%d][%d] = %.9g, reference %.9g, |err| %.3g > tol %.3g", where, i, j,
          got, want, d, tol);
    e->max_abs = d > e->max_abs ? d : e->max_abs;
    e->max_ratio = d / tol > e->max_ratio ? d / tol : e->max_ratio;
}

/* ---- packing ------------------------------------------------------------------ */

static const int pack_n[] = {1, 15, 16, 17, 33, 100};
static const int pack_k[] = {1, 3, 4, 5, 63, 64, 65, 130};

/* The columns a view of panels [p0, p0 + np) holds. */
static int view_n(int n, int p0, int np)
{
    return n - p0 * LM_PANEL < np * LM_PANEL ? n - p0 * LM_PANEL : np * LM_PANEL;
}

static void check_pf32_pack(rng *r, int n, int k)
{
    int np = lm_panels(n);
    size_t bytes = lm_pf32_bytes(n, k);
    CHECK(bytes == (size_t)np * LM_PANEL * (size_t)k * sizeof(float),
          "lm_pf32_bytes(%d, %d) = %zu", n, k, bytes);
    float *w = matrix_new(r, n, k, k, -2.0f, 2.0f);
    unsigned char *raw = xmalloc((size_t)n * k * sizeof(float) + 1);
    memcpy(raw + 1, w, (size_t)n * k * sizeof(float)); /* as mapped: not 4-byte aligned */
    float *mem = alloc64(bytes);
    memset(mem, 0xa5, bytes);
    lm_pf32 p;
    lm_pf32_pack(&p, mem, raw + 1, n, k);
    CHECK(p.n == n && p.k == k && p.n_panels == np && p.data == mem,
          "pf32 n=%d k=%d: header n=%d k=%d n_panels=%d", n, k, p.n, p.k, p.n_panels);
    for (int pn = 0; pn < np; pn++)
        for (int kk = 0; kk < k; kk++)
            for (int c = 0; c < LM_PANEL; c++) {
                int row = pn * LM_PANEL + c;
                size_t at = ((size_t)pn * k + kk) * LM_PANEL + c;
                float want = row < n ? w[(size_t)row * k + kk] : 0.0f;
                CHECK(same_f32(mem[at], want),
                      "pf32 n=%d k=%d: data[%zu] (W[%d][%d]%s) = %g (0x%08x), expected %g", n,
                      k, at, row, kk, row < n ? "" : ", padding", (double)mem[at],
                      f32_bits(mem[at]), (double)want);
            }
    for (int p0 = 0; p0 < np; p0++)
        for (int vp = 1; p0 + vp <= np; vp++) {
            lm_pf32 v = lm_pf32_view(&p, p0, vp);
            CHECK(v.n == view_n(n, p0, vp) && v.k == k && v.n_panels == vp &&
                      v.data == mem + (size_t)p0 * k * LM_PANEL,
                  "pf32 n=%d k=%d, view of panels [%d, +%d): n=%d k=%d n_panels=%d data+%td",
                  n, k, p0, vp, v.n, v.k, v.n_panels, v.data - mem);
            for (int row = 0; row < v.n; row++)
                for (int col = 0; col < k; col++) {
                    float want = w[(size_t)(p0 * LM_PANEL + row) * k + col];
                    CHECK(same_f32(lm_pf32_get(&v, row, col), want),
                          "pf32 n=%d k=%d, view [%d, +%d): get(%d, %d) = %g, expected %g", n, k,
                          p0, vp, row, col, (double)lm_pf32_get(&v, row, col), (double)want);
                }
        }
    free(mem);
    free(raw);
    free(w);
}

START_TEST(test_pack_pf32)
{
    rng r = rng_stream(1);
    for (int a = 0; a < LEN(pack_n); a++)
        for (int b = 0; b < LEN(pack_k); b++)
            check_pf32_pack(&r, pack_n[a], pack_k[b]);
    say("pack       pf32   : n {1,15,16,17,33,100} x k {1,3,4,5,63,64,65,130}, unaligned "
        "source: layout, zero padding, every view and get: exact");
}
END_TEST

/* Every byte of the packed data against the documented index formula,
 * zeros in the padding (columns past n, k past k) included. */
static void check_pq8_data(const lm_pq8 *p, const int8_t *q)
{
    int n = p->n, k = p->k, kp = p->kp;
    for (int pn = 0; pn < p->n_panels; pn++)
        for (int g = 0; g < kp / 4; g++)
            for (int c = 0; c < LM_PANEL; c++)
                for (int i = 0; i < 4; i++) {
                    size_t at = (((size_t)pn * (kp / 4) + g) * LM_PANEL + c) * 4 + i;
                    int row = pn * LM_PANEL + c, col = 4 * g + i;
                    int pad = row >= n || col >= k, want = pad ? 0 : q[(size_t)row * k + col];
                    CHECK(p->data[at] == want,
                          "pq8 n=%d k=%d kp=%d: data[%zu] (q[%d][%d]%s) = %d, expected %d", n,
                          k, kp, at, row, col, pad ? ", padding" : "", p->data[at], want);
                }
}

static void check_pq8_views(const lm_pq8 *p, const int8_t *q, const float *scale)
{
    int n = p->n, k = p->k;
    for (int p0 = 0; p0 < p->n_panels; p0++)
        for (int vp = 1; p0 + vp <= p->n_panels; vp++) {
            lm_pq8 v = lm_pq8_view(p, p0, vp);
            CHECK(v.n == view_n(n, p0, vp) && v.k == k && v.kp == p->kp && v.n_panels == vp &&
                      v.data == p->data + (size_t)p0 * p->kp * LM_PANEL &&
                      v.scale == p->scale + p0 * LM_PANEL && v.wsum == p->wsum + p0 * LM_PANEL,
                  "pq8 n=%d k=%d, view of panels [%d, +%d): n=%d k=%d kp=%d n_panels=%d, "
                  "data+%td scale+%td wsum+%td",
                  n, k, p0, vp, v.n, v.k, v.kp, v.n_panels, v.data - p->data,
                  v.scale - p->scale, v.wsum - p->wsum);
            for (int row = 0; row < v.n; row++) {
                int j = p0 * LM_PANEL + row;
                CHECK(same_f32(v.scale[row], scale[j]), "pq8 view [%d, +%d): scale[%d] = %g",
                      p0, vp, row, (double)v.scale[row]);
                for (int col = 0; col < k; col++)
                    CHECK(lm_pq8_get(&v, row, col) == q[(size_t)j * k + col],
                          "pq8 n=%d k=%d, view [%d, +%d): get(%d, %d) = %d, expected %d", n, k,
                          p0, vp, row, col, lm_pq8_get(&v, row, col), q[(size_t)j * k + col]);
            }
        }
}

static void check_pq8_pack(rng *r, int n, int k)
{
    int np = lm_panels(n), kp = lm_round_up(k, LM_KALIGN);
    size_t cols = (size_t)np * LM_PANEL, bytes = lm_pq8_bytes(n, k);
    int8_t *q = xmalloc((size_t)n * k);
    float *scale = matrix_new(r, 1, n, n, 1e-4f, 1e-1f);
    for (int i = 0; i < n * k; i++)
        q[i] = rng_i8(r);
    unsigned char *qraw = xmalloc((size_t)n * k + 1), *sraw = xmalloc((size_t)n * 4 + 3);
    memcpy(qraw + 1, q, (size_t)n * k);
    memcpy(sraw + 3, scale, (size_t)n * 4);
    char *mem = alloc64(bytes);
    memset(mem, 0x5a, bytes);
    lm_pq8 p;
    lm_pq8_pack(&p, mem, qraw + 1, sraw + 3, n, k);
    CHECK(p.n == n && p.k == k && p.kp == kp && p.n_panels == np && (char *)p.data == mem,
          "pq8 n=%d k=%d: header n=%d k=%d kp=%d n_panels=%d", n, k, p.n, p.k, p.kp,
          p.n_panels);
    /* the kernels load scale and wsum with aligned 64-byte loads */
    CHECK((uintptr_t)p.scale % 64 == 0 && (uintptr_t)p.wsum % 64 == 0 &&
              (char *)p.scale >= mem + cols * kp && (char *)(p.wsum + cols) <= mem + bytes &&
              (char *)(p.scale + cols) <= (char *)p.wsum,
          "pq8 n=%d k=%d: scale at +%td, wsum at +%td: misaligned or not within the "
          "%zu bytes past the %zu of data",
          n, k, (char *)p.scale - mem, (char *)p.wsum - mem, bytes, cols * kp);
    check_pq8_data(&p, q);
    for (size_t c = 0; c < cols; c++) {
        int32_t sum = 0;
        for (int kk = 0; c < (size_t)n && kk < k; kk++)
            sum += q[c * k + kk];
        float s = c < (size_t)n ? scale[c] : 0.0f;
        CHECK(same_f32(p.scale[c], s) && p.wsum[c] == sum,
              "pq8 n=%d k=%d: column %zu: scale %g wsum %d, expected %g and %d", n, k, c,
              (double)p.scale[c], p.wsum[c], (double)s, sum);
    }
    for (int row = 0; row < n; row++)
        for (int col = 0; col < kp; col++) {
            int want = col < k ? q[(size_t)row * k + col] : 0;
            CHECK(lm_pq8_get(&p, row, col) == want, "pq8 n=%d k=%d: get(%d, %d) = %d, expected %d",
                  n, k, row, col, lm_pq8_get(&p, row, col), want);
        }
    check_pq8_views(&p, q, scale);
    free(mem);
    free(sraw);
    free(qraw);
    free(scale);
    free(q);
}

START_TEST(test_pack_pq8)
{
    rng r = rng_stream(2);
    for (int a = 0; a < LEN(pack_n); a++)
        for (int b = 0; b < LEN(pack_k); b++)
            check_pq8_pack(&r, pack_n[a], pack_k[b]);
    say("pack       pq8    : n {1,15,16,17,33,100} x k {1,3,4,5,63,64,65,130}, unaligned "
        "source: layout, zero padding to kp, scale, wsum, alignment, every view and get: exact");
}
END_TEST

/* ---- the reference quantizer ------------------------------------------------------ */

/* q as llm/kernels.h defines it, in exact arithmetic: x * 127 / amax rounded
 * half to even and clamped. x * 127 is exact in double and the quotient is
 * correctly rounded, so exact ties stay ties. `real` gets the unrounded q. */
static int quant_def(float x, float amax, double *real)
{
    double v = (double)x * 127.0 / (double)amax, q = nearbyint(v);
    *real = v;
    return (int)(q > 127.0 ? 127.0 : q < -127.0 ? -127.0 : q);
}

typedef struct qstat {
    int rows, tie_flips;
    double max_dev; /* max |q - x * 127 / amax| */
} qstat;

/* lm_quantize_row_ref on one row against the definition. The reference
 * computes x * (127 / amax) in float, within 2^-22 relative of the exact
 * quotient: q must equal the definition except within 1e-4 of a .5 tie,
 * and there be one of the two neighbours. */
static void check_ref_row(const float *x, int k, qstat *st, const char *what)
{
    int8_t *q = xmalloc((size_t)k + 1);
    float scale = NAN, amax = 0.0f;
    memset(q, 0x55, (size_t)k + 1);
    lm_quantize_row_ref(x, k, q, &scale);
    for (int i = 0; i < k; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    CHECK(same_f32(scale, amax / 127.0f), "%s (k=%d): scale %.9g (0x%08x), expected amax / 127 "
          "= %.9g / 127", what, k, (double)scale, f32_bits(scale), (double)amax);
    CHECK(q[k] == 0x55, "%s (k=%d): wrote q[%d], past k", what, k, k);
    for (int i = 0; i < k; i++) {
        double real = 0.0;
        int want = amax == 0.0f ? 0 : quant_def(x[i], amax, &real);
        double frac = fabs(real) - floor(fabs(real));
        int near_tie = fabs(frac - 0.5) < 1e-4 && fabs(real) < 127.5;
        CHECK(q[i] == want || (near_tie && abs(q[i] - want) == 1),
              "%s (k=%d): x[%d] = %.9g, amax %.9g: q = %d, expected %d (x * 127 / amax = %.9f)",
              what, k, i, (double)x[i], (double)amax, q[i], want, real);
        st->tie_flips += q[i] != want;
        double dev = fabs(q[i] - fmax(-127.0, fmin(127.0, real)));
        st->max_dev = dev > st->max_dev ? dev : st->max_dev;
    }
    st->rows++;
    free(q);
}

START_TEST(test_quantize_ref_cases)
{
    static const struct {
        float x[10];
        int8_t q[10];
        int k;
        float scale;
        const char *what;
    } cases[] = {
        /* 127 / amax exactly 1, 0.5 and 2: exact ties round half to even */
        {{127, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 3.49f},
         {127, 0, 2, 2, 0, -2, -2, 126, -126, 3}, 10, 1.0f, "ties, amax 127"},
        {{-254, 1, 3, 5, -1, -3, 253, 251}, {-127, 0, 2, 2, 0, -2, 126, 126}, 8, 2.0f,
         "ties, amax 254"},
        {{0.25f, 0.75f, -0.25f, 63.5f, 1.25f}, {0, 2, 0, 127, 2}, 5, 0.5f, "ties, amax 63.5"},
        {{FLT_MAX, -FLT_MAX / 4, FLT_MAX / 1e6f, 1}, {127, -32, 0, 0}, 4, FLT_MAX / 127.0f,
         "FLT_MAX row"},
        {{-0.0f, 1, -0.0f, 0}, {0, 127, 0, 0}, 4, 1.0f / 127.0f, "negative zeros"},
        {{-0.0f, -0.0f, 0, -0.0f}, {0, 0, 0, 0}, 4, 0.0f, "zero row, -0"},
        {{0}, {0}, 1, 0.0f, "zero row, k 1"},
    };
    qstat st = {0};
    for (int c = 0; c < LEN(cases); c++) {
        int8_t q[10];
        float scale = NAN;
        memset(q, 0x55, sizeof q);
        lm_quantize_row_ref(cases[c].x, cases[c].k, q, &scale);
        for (int i = 0; i < cases[c].k; i++)
            CHECK(q[i] == cases[c].q[i], "%s: x[%d] = %.9g: q = %d, expected %d", cases[c].what,
                  i, (double)cases[c].x[i], q[i], cases[c].q[i]);
        CHECK(same_f32(scale, cases[c].scale), "%s: scale %.9g (0x%08x), expected %.9g",
              cases[c].what, (double)scale, f32_bits(scale), (double)cases[c].scale);
        check_ref_row(cases[c].x, cases[c].k, &st, cases[c].what);
    }
    say("quantize   ref    : exact ties (half to even), FLT_MAX, -0, zero rows (scale +0): as "
        "defined");
}
END_TEST

/* Row kinds every quantizer must agree on. */
enum { ROW_UNIFORM, ROW_WIDE, ROW_TIES127, ROW_TIES254, ROW_ZERO, ROW_SPIKE, ROW_HUGE, N_ROWKIND };

static void fill_row(rng *r, float *x, int k, int kind)
{
    float e = ldexpf(1.0f, rng_int(r, -60, 60));
    for (int i = 0; i < k; i++)
        switch (kind) {
        case ROW_UNIFORM: x[i] = rng_f(r, -1.0f, 1.0f) * e; break;
        case ROW_WIDE: x[i] = ldexpf(rng_f(r, -1.0f, 1.0f), rng_int(r, -30, 30)); break;
        case ROW_TIES127: x[i] = (float)rng_int(r, -127, 126) + (i % 4 ? 0.5f : 0.0f); break;
        case ROW_TIES254: x[i] = (float)(2 * rng_int(r, -126, 126) + 1); break;
        case ROW_ZERO: x[i] = rng_int(r, 0, 1) ? -0.0f : 0.0f; break;
        case ROW_SPIKE: x[i] = rng_f(r, -1.0f, 1.0f) * 1e-3f; break;
        default: x[i] = rng_f(r, -1.0f, 1.0f) * (FLT_MAX / 2); break;
        }
    /* one element sets amax: 127 and 254 make 127 / amax exact, so the
     * half-integers above are exact ties */
    static const float top[N_ROWKIND] = {0, 0, 127.0f, 254.0f, 0, 1e3f, FLT_MAX};
    if (top[kind] != 0)
        x[rng_int(r, 0, k - 1)] = rng_int(r, 0, 1) ? top[kind] : -top[kind];
}

START_TEST(test_quantize_ref_random)
{
    rng r = rng_stream(3);
    qstat st = {0};
    float x[300];
    for (int t = 0; t < 600; t++) {
        int k = t < 300 ? t + 1 : rng_int(&r, 1, 300);
        char what[48];
        fill_row(&r, x, k, t % N_ROWKIND);
        snprintf(what, sizeof what, "random row %d, kind %d", t, t % N_ROWKIND);
        check_ref_row(x, k, &st, what);
    }
    say("quantize   ref    : %d random rows, k 1..300, %d kinds, vs x*127/amax in double: max "
        "|q - exact| %.6f, %d near-tie flips (allowed)",
        st.rows, N_ROWKIND, st.max_dev, st.tie_flips);
}
END_TEST

/* Rows whose amax is below 127 / FLT_MAX (~3.7e-37; normal floats still)
 * or subnormal: there 127 / amax is not a float. */
START_TEST(test_quantize_ref_tiny)
{
    static const float t1[] = {3e-37f, 1e-37f, 0.0f};
    static const float t2[] = {1e-38f, 2.5e-39f, 0.0f, -1e-38f, -0.0f, -5e-39f};
    static const float t3[] = {1e-45f, 0.0f, -0.0f};
    qstat st = {0};
    check_ref_row(t1, LEN(t1), &st, "amax 3e-37");
    check_ref_row(t2, LEN(t2), &st, "amax 1e-38");
    check_ref_row(t3, LEN(t3), &st, "amax 1e-45 (subnormal)");
    say("quantize   ref    : tiny rows (amax 3e-37, 1e-38, 1e-45): as defined");
}
END_TEST

/* ---- int8 kernels -------------------------------------------------------------------- */

/* quant_rows on x[M, ldx] against lm_quantize_row_ref: every byte up to kp,
 * every scale, nothing written past them. */
static void check_quant_rows(const lm_kern *kern, const float *x, int M, int k, int ldx, int kp,
                             const char *what)
{
    size_t qbytes = (size_t)M * kp;
    int8_t *q = xmalloc(qbytes + 64), *want = xmalloc((size_t)kp);
    float *s = xmalloc(((size_t)M + 1) * sizeof(float));
    memset(q, 0xa5, qbytes + 64);
    for (int i = 0; i <= M; i++)
        s[i] = GUARD;
    kern->quant_rows(M, k, x, ldx, q, kp, s);
    for (int i = 0; i < M; i++) {
        float ws;
        memset(want, 0, (size_t)kp);
        lm_quantize_row_ref(x + (size_t)i * ldx, k, want, &ws);
        CHECK(same_f32(s[i], ws), "quant_rows %s, %s, M=%d k=%d ldx=%d kp=%d: s[%d] = %.9g "
              "(0x%08x), lm_quantize_row_ref gives %.9g (0x%08x)", kern->name, what, M, k, ldx,
              kp, i, (double)s[i], f32_bits(s[i]), (double)ws, f32_bits(ws));
        for (int j = 0; j < kp; j++)
            CHECK(q[(size_t)i * kp + j] == want[j],
                  "quant_rows %s, %s, M=%d k=%d ldx=%d kp=%d: first difference at q[%d][%d] = "
                  "%d, expected %d%s (x = %.9g, row scale %.9g)",
                  kern->name, what, M, k, ldx, kp, i, j, q[(size_t)i * kp + j], want[j],
                  j < k ? "" : " (zero padding)", j < k ? (double)x[(size_t)i * ldx + j] : 0.0,
                  (double)ws);
    }
    for (int j = 0; j < 64; j++)
        CHECK((uint8_t)q[qbytes + j] == 0xa5, "quant_rows %s, %s, M=%d k=%d kp=%d: wrote past "
              "M * kp", kern->name, what, M, k, kp);
    CHECK(same_f32(s[M], GUARD), "quant_rows %s, %s, M=%d: wrote s[M]", kern->name, what, M);
    free(s);
    free(want);
    free(q);
}

START_TEST(test_quant_rows)
{
    const lm_kern *kern = kern_or_skip(_i, "quant_rows");
    if (!kern)
        return;
    static const int ks[] = {1,   2,   3,   5,   7,   13,  17, 31, 33,  47,  63,  65, 100,
                             127, 129, 201, 255, 257, 299, 300, 4, 16, 64, 128, 256};
    static const int Ms[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 70};
    rng r = rng_stream(100 + (uint64_t)_i);
    int shapes = 64;
    for (int t = 0; t < shapes; t++) {
        int k = t < LEN(ks) ? ks[t] : rng_int(&r, 1, 300);
        int M = t < LEN(Ms) ? Ms[t] : rng_int(&r, 1, 70), ldx = k + rng_int(&r, 1, 9);
        int kp = lm_round_up(k, LM_KALIGN) + (t % 5 == 4 ? LM_KALIGN : 0);
        float *x = matrix_new(&r, M, k, ldx, -1.0f, 1.0f);
        for (int i = 0; i < M; i++)
            fill_row(&r, x + (size_t)i * ldx, k, (i + t) % N_ROWKIND);
        check_quant_rows(kern, x, M, k, ldx, kp, "random rows");
        free(x);
    }
    say("quant_rows %-7s: %d matrices, M 1..70, k 1..300, ldx > k, kp >= k, rows with ties, "
        "-0, zeros, 2^+-60, FLT_MAX: bit-identical to lm_quantize_row_ref, zeros to kp",
        kern->name, shapes);
}
END_TEST

/* The same contract on rows too small for 127 / amax to be a float. */
START_TEST(test_quant_rows_tiny)
{
    const lm_kern *kern = kern_or_skip(_i, "quant_rows");
    if (!kern)
        return;
    enum { K = 21, LDX = 24 };
    float x[3 * LDX];
    for (int i = 0; i < 3 * LDX; i++)
        x[i] = i % LDX >= K ? POISON : i % 4 ? 0.0f : 2.5e-39f;
    x[1] = 1e-38f;           /* row 0: amax 1e-38 */
    x[LDX + 5] = -1e-45f;    /* row 1: amax 2.5e-39 */
    x[2 * LDX + 20] = 3e-37f; /* row 2: amax 3e-37 */
    check_quant_rows(kern, x, 3, K, LDX, LM_KALIGN, "tiny rows (amax 1e-38, 2.5e-39, 3e-37)");
    say("quant_rows %-7s: tiny rows (amax 3e-37 and below): bit-identical to "
        "lm_quantize_row_ref", kern->name);
}
END_TEST

static const int gemm_M[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65};
static const int gemm_n[] = {1, 15, 16, 17, 31, 32, 33};
static const int gemm_k[] = {1, 3, 4, 63, 64, 65, 127, 128, 129, 300};
#define N_GRID (LEN(gemm_M) * LEN(gemm_n) * LEN(gemm_k))
#define N_RANDOM_SHAPES 40

/* Shape i of the gemm tests: the whole grid, then random shapes with
 * M 1..70, n 1..100, k 1..300. */
static void gemm_shape(int i, rng *r, int *M, int *n, int *k)
{
    if (i < N_GRID) {
        *M = gemm_M[i % LEN(gemm_M)];
        *n = gemm_n[i / LEN(gemm_M) % LEN(gemm_n)];
        *k = gemm_k[i / LEN(gemm_M) / LEN(gemm_n)];
    } else {
        *M = rng_int(r, 1, 70);
        *n = rng_int(r, 1, 100);
        *k = rng_int(r, 1, 300);
    }
}

enum { Q_RANDOM, Q_ALL_POS, Q_NEG_POS, Q_SIGNS };

/* One qgemm problem: weights [n, k] row-major and packed, activations q
 * [M, kp] zero padded (as quant_rows leaves them) with scales s, a bias,
 * and the exact int32 sums from the row-major weights. */
typedef struct qprob {
    int M, n, k, kp;
    int8_t *wq;    /* [n, k] */
    float *wscale; /* [n] */
    void *wmem;
    lm_pq8 w;
    int8_t *q;    /* [M, kp] */
    float *s;     /* [M] */
    float *bias;  /* [n] */
    int32_t *acc; /* [M, n] */
} qprob;

static int8_t qval(rng *r, int mode, int weight)
{
    switch (mode) {
    case Q_ALL_POS: return 127;
    case Q_NEG_POS: return weight ? 127 : -127;
    case Q_SIGNS: return rng_int(r, 0, 1) ? 127 : -127;
    default: return rng_i8(r);
    }
}

static qprob qprob_new(rng *r, int M, int n, int k, int mode)
{
    qprob p = {.M = M, .n = n, .k = k, .kp = lm_round_up(k, LM_KALIGN)};
    p.wq = xmalloc((size_t)n * k);
    p.q = xmalloc((size_t)M * p.kp);
    p.acc = xmalloc((size_t)M * n * sizeof(int32_t));
    p.wscale = matrix_new(r, 1, n, n, 1e-3f, 2e-2f);
    p.s = matrix_new(r, 1, M, M, 1e-3f, 5e-2f);
    p.bias = matrix_new(r, 1, n, n, -2.0f, 2.0f);
    for (int i = 0; i < n * k; i++)
        p.wq[i] = qval(r, mode, 1);
    memset(p.q, 0, (size_t)M * p.kp);
    for (int i = 0; i < M; i++)
        for (int kk = 0; kk < k; kk++)
            p.q[(size_t)i * p.kp + kk] = qval(r, mode, 0);
    p.wmem = alloc64(lm_pq8_bytes(n, k));
    lm_pq8_pack(&p.w, p.wmem, p.wq, p.wscale, n, k);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < n; j++) {
            int32_t a = 0;
            for (int kk = 0; kk < k; kk++)
                a += (int32_t)p.q[(size_t)i * p.kp + kk] * p.wq[(size_t)j * k + kk];
            p.acc[(size_t)i * n + j] = a;
        }
    return p;
}

static void qprob_free(qprob *p)
{
    free(p->wmem);
    free(p->bias);
    free(p->s);
    free(p->wscale);
    free(p->acc);
    free(p->q);
    free(p->wq);
}

/* kern->qgemm into a guarded buffer (pre-filled when accumulating) against
 * the documented float steps, bit for bit. */
static void check_qgemm(const lm_kern *kern, rng *r, const qprob *p, int bias, int accum,
                        const char *what)
{
    int ldy = p->n + rng_int(r, 1, 7);
    outbuf o = outbuf_new(r, p->M, p->n, ldy, accum);
    float *old = xmalloc((size_t)p->M * ldy * sizeof(float));
    memcpy(old, o.y, (size_t)p->M * ldy * sizeof(float));
    kern->qgemm(p->M, p->q, p->s, &p->w, bias ? p->bias : NULL, o.y, ldy, accum);
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->n; j++) {
            int32_t acc = p->acc[(size_t)i * p->n + j];
            float v = (float)acc * (p->s[i] * p->wscale[j]);
            if (bias)
                v += p->bias[j];
            float want = accum ? old[(size_t)i * ldy + j] + v : v;
            float got = o.y[(size_t)i * ldy + j];
            CHECK(same_f32(got, want),
                  "qgemm %s, %s, M=%d n=%d k=%d ldy=%d bias=%d accum=%d: first difference at "
                  "y[%d][%d]: got %.9g (0x%08x), expected %.9g (0x%08x) from acc %d, s %.9g, "
                  "scale %.9g",
                  kern->name, what, p->M, p->n, p->k, ldy, bias, accum, i, j, (double)got,
                  f32_bits(got), (double)want, f32_bits(want), acc, (double)p->s[i],
                  (double)p->wscale[j]);
        }
    char where[128];
    snprintf(where, sizeof where, "qgemm %s, %s, M=%d n=%d k=%d bias=%d accum=%d", kern->name,
             what, p->M, p->n, p->k, bias, accum);
    check_guards(&o, where);
    free(old);
    free(o.base);
}

START_TEST(test_qgemm)
{
    const lm_kern *kern = kern_or_skip(_i, "qgemm");
    if (!kern)
        return;
    rng r = rng_stream(200 + (uint64_t)_i);
    int runs = 0;
    for (int i = 0; i < N_GRID + N_RANDOM_SHAPES; i++) {
        int M, n, k;
        gemm_shape(i, &r, &M, &n, &k);
        qprob p = qprob_new(&r, M, n, k, Q_RANDOM);
        for (int v = 0; v < 4; v++, runs++)
            check_qgemm(kern, &r, &p, v & 1, v >> 1, "random");
        qprob_free(&p);
    }
    say("qgemm      %-7s: %d runs: M {1,7,8,9,15,16,17,31,32,33,64,65} x n {1,15,16,17,31,32,"
        "33} x k {1,3,4,63,64,65,127,128,129,300} + %d random shapes (M<=70, n<=100, k<=300), "
        "x bias/accum, ldy > n: bit-identical to the int32 reference, guards intact",
        kern->name, runs, N_RANDOM_SHAPES);
}
END_TEST

/* Saturated operands over long rows: sums up to 127 * 127 * 4096, past
 * 2^24, where the int32 -> float conversion itself rounds. */
START_TEST(test_qgemm_extreme)
{
    const lm_kern *kern = kern_or_skip(_i, "qgemm");
    if (!kern)
        return;
    static const int shapes[][3] = {{1, 17, 1024}, {9, 33, 1024}, {33, 16, 4096}, {3, 5, 4096}};
    static const char *const modes[] = {"random", "+127 x +127", "-127 x +127", "+-127"};
    rng r = rng_stream(300 + (uint64_t)_i);
    int32_t amax = 0;
    for (int s = 0; s < LEN(shapes); s++)
        for (int mode = Q_ALL_POS; mode <= Q_SIGNS; mode++) {
            qprob p = qprob_new(&r, shapes[s][0], shapes[s][1], shapes[s][2], mode);
            for (int i = 0; i < p.M * p.n; i++)
                amax = abs(p.acc[i]) > amax ? abs(p.acc[i]) : amax;
            for (int v = 0; v < 4; v++)
                check_qgemm(kern, &r, &p, v & 1, v >> 1, modes[mode]);
            qprob_free(&p);
        }
    say("qgemm      %-7s: saturated +-127 operands, k 1024 and 4096 (|acc| up to %d): "
        "bit-identical", kern->name, amax);
}
END_TEST

/* ---- fp32 gemm ------------------------------------------------------------------------ */

typedef struct sprob {
    int M, n, k, ldx;
    float *w;    /* [n, k] */
    float *x;    /* [M, ldx], POISON past k */
    float *bias; /* [n] */
    void *wmem;
    lm_pf32 pw;
} sprob;

static sprob sprob_new(rng *r, int M, int n, int k)
{
    sprob p = {.M = M, .n = n, .k = k, .ldx = k + rng_int(r, 1, 5)};
    p.w = matrix_new(r, n, k, k, -1.0f, 1.0f);
    p.x = matrix_new(r, M, k, p.ldx, -1.0f, 1.0f);
    p.bias = matrix_new(r, 1, n, n, -1.0f, 1.0f);
    p.wmem = alloc64(lm_pf32_bytes(n, k));
    lm_pf32_pack(&p.pw, p.wmem, p.w, n, k);
    return p;
}

static void sprob_free(sprob *p)
{
    free(p->wmem);
    free(p->bias);
    free(p->x);
    free(p->w);
}

static void check_sgemm(const lm_kern *kern, rng *r, const sprob *p, int bias, int accum,
                        errstat *e)
{
    int ldy = p->n + rng_int(r, 1, 7);
    outbuf o = outbuf_new(r, p->M, p->n, ldy, accum);
    float *old = xmalloc((size_t)p->M * ldy * sizeof(float));
    memcpy(old, o.y, (size_t)p->M * ldy * sizeof(float));
    kern->sgemm(p->M, p->x, p->ldx, &p->pw, bias ? p->bias : NULL, o.y, ldy, accum);
    char where[128];
    snprintf(where, sizeof where, "sgemm %s M=%d n=%d k=%d ldx=%d ldy=%d bias=%d accum=%d y",
             kern->name, p->M, p->n, p->k, p->ldx, ldy, bias, accum);
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->n; j++) {
            double want = 0.0, mag = 0.0, ov = old[(size_t)i * ldy + j];
            for (int kk = 0; kk < p->k; kk++) {
                double t = (double)p->x[(size_t)i * p->ldx + kk] * p->w[(size_t)j * p->k + kk];
                want += t;
                mag += fabs(t);
            }
            want += (bias ? p->bias[j] : 0.0) + (accum ? ov : 0.0);
            mag += (bias ? fabs(p->bias[j]) : 0.0) + (accum ? fabs(ov) : 0.0);
            check_close(e, where, i, j, o.y[(size_t)i * ldy + j], want, REL_TOL * mag + ABS_TOL);
        }
    check_guards(&o, where);
    free(old);
    free(o.base);
}

START_TEST(test_sgemm)
{
    const lm_kern *kern = kern_or_skip(_i, "sgemm");
    if (!kern)
        return;
    rng r = rng_stream(400 + (uint64_t)_i);
    errstat e = {0};
    int runs = 0;
    for (int i = 0; i < N_GRID + N_RANDOM_SHAPES; i++) {
        int M, n, k;
        gemm_shape(i, &r, &M, &n, &k);
        sprob p = sprob_new(&r, M, n, k);
        for (int v = 0; v < 4; v++, runs++)
            check_sgemm(kern, &r, &p, v & 1, v >> 1, &e);
        sprob_free(&p);
    }
    say("sgemm      %-7s: %d runs, the qgemm shapes x bias/accum, ldx > k, ldy > n: vs double, "
        "tol %.0e * sum|terms| + %.0e: max |err| %.3g (%.3f of tol), guards intact",
        kern->name, runs, REL_TOL, ABS_TOL, e.max_abs, e.max_ratio);
}
END_TEST

/* Panel views, as the scorer splits the item table across threads: every
 * split's result must be bit-identical to one whole call. Chunk sizes
 * cycle, so views start on odd panels and end on the ragged one. */
static const int view_chunks[][4] = {
    {1, 1, 1, 1}, {2, 2, 2, 2}, {3, 3, 3, 3}, {2, 1, 3, 1}, {1, 2, 2, 3}};

static void check_same_result(const char *where, const outbuf *whole, const outbuf *parts)
{
    for (int i = 0; i < whole->M; i++)
        for (int j = 0; j < whole->n; j++) {
            float a = whole->y[(size_t)i * whole->ldy + j];
            float b = parts->y[(size_t)i * parts->ldy + j];
            CHECK(same_f32(a, b), "%s: y[%d][%d] = %.9g, one whole call gives %.9g", where, i, j,
                  (double)b, (double)a);
        }
    check_guards(parts, where);
}

START_TEST(test_gemm_views)
{
    const lm_kern *kern = kern_or_skip(_i, "views");
    if (!kern)
        return;
    static const int shapes[][3] = {{19, 100, 129}, {33, 81, 64}, {1, 47, 3}};
    rng r = rng_stream(500 + (uint64_t)_i);
    int splits = 0;
    for (int s = 0; s < LEN(shapes); s++) {
        int M = shapes[s][0], n = shapes[s][1], k = shapes[s][2], ldy = n + 3;
        qprob qp = qprob_new(&r, M, n, k, Q_RANDOM);
        sprob sp = sprob_new(&r, M, n, k);
        outbuf qw = outbuf_new(&r, M, n, ldy, 0), sw = outbuf_new(&r, M, n, ldy, 0);
        kern->qgemm(M, qp.q, qp.s, &qp.w, qp.bias, qw.y, ldy, 0);
        kern->sgemm(M, sp.x, sp.ldx, &sp.pw, sp.bias, sw.y, ldy, 0);
        for (int split = 0; split < LEN(view_chunks); split++, splits++) {
            outbuf qv = outbuf_new(&r, M, n, ldy, 0), sv = outbuf_new(&r, M, n, ldy, 0);
            for (int p0 = 0, c = 0; p0 < lm_panels(n); c++) {
                int np = view_chunks[split][c % 4], j0 = p0 * LM_PANEL;
                np = p0 + np > lm_panels(n) ? lm_panels(n) - p0 : np;
                lm_pq8 vq = lm_pq8_view(&qp.w, p0, np);
                lm_pf32 vs = lm_pf32_view(&sp.pw, p0, np);
                kern->qgemm(M, qp.q, qp.s, &vq, qp.bias + j0, qv.y + j0, ldy, 0);
                kern->sgemm(M, sp.x, sp.ldx, &vs, sp.bias + j0, sv.y + j0, ldy, 0);
                p0 += np;
            }
            char where[96];
            snprintf(where, sizeof where, "qgemm %s on views M=%d n=%d k=%d, split %d",
                     kern->name, M, n, k, split);
            check_same_result(where, &qw, &qv);
            snprintf(where, sizeof where, "sgemm %s on views M=%d n=%d k=%d, split %d",
                     kern->name, M, n, k, split);
            check_same_result(where, &sw, &sv);
            free(qv.base);
            free(sv.base);
        }
        free(qw.base);
        free(sw.base);
        sprob_free(&sp);
        qprob_free(&qp);
    }
    say("views      %-7s: qgemm and sgemm over %d panel splits (chunks of 1, 2, 3, mixed): "
        "bit-identical to one call, guards intact", kern->name, splits);
}
END_TEST

/* ---- elementwise kernels ------------------------------------------------------------ */

static const int ew_n[] = {1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 64, 100, 255, 257, 300};

/* A SIMD result against the scalar table's, under the reference's
 * tolerance (their difference is at most the sum of both errors, each
 * well inside it). */
static void check_vs_scalar(errstat *e, const char *where, const lm_kern *kern, int i, int j,
                            float got, float sc, double tol)
{
    char w[160];
    snprintf(w, sizeof w, "%s, against the scalar table", where);
    if (kern->isa != LM_ISA_SCALAR)
        check_close(e, w, i, j, got, sc, tol);
}

static void say_elementwise(const char *kernel, const lm_kern *kern, int cases,
                            const char *inputs, const errstat *ref, const errstat *sc)
{
    char vs[64] = "";
    if (kern->isa != LM_ISA_SCALAR)
        snprintf(vs, sizeof vs, "; vs scalar max |diff| %.3g", sc->max_abs);
    say("%-10s %-7s: %d shapes, %s: vs double max |err| %.3g (%.3f of tol)%s", kernel,
        kern->name, cases, inputs, ref->max_abs, ref->max_ratio, vs);
}

/* Layernorm's error: the rounding of (x - mean) * rstd * g + b, plus the
 * float mean's error, which grows with mean|x| / std; the tolerance scales
 * with both. The last row (M > 1) is constant: var 0, y = b. */
static void check_layernorm_case(const lm_kern *kern, rng *r, int M, int d, float offset,
                                 errstat *e, errstat *es)
{
    int ldx = d + rng_int(r, 0, 3), ldy = d + rng_int(r, 0, 3);
    float *x = matrix_new(r, M, d, ldx, -1.0f, 1.0f);
    float *g = matrix_new(r, 1, d, d, 0.5f, 1.5f), *b = matrix_new(r, 1, d, d, -1.0f, 1.0f);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < d; j++)
            x[(size_t)i * ldx + j] = M > 1 && i == M - 1 ? 3.0f : x[(size_t)i * ldx + j] + offset;
    outbuf o = outbuf_new(r, M, d, ldy, 0), os = outbuf_new(r, M, d, ldy, 0);
    kern->layernorm(M, d, x, ldx, g, b, o.y, ldy);
    lm_kern_get(LM_ISA_SCALAR)->layernorm(M, d, x, ldx, g, b, os.y, ldy);
    char where[96];
    snprintf(where, sizeof where, "layernorm %s M=%d d=%d mean %g y", kern->name, M, d,
             (double)offset);
    for (int i = 0; i < M; i++) {
        const float *xr = x + (size_t)i * ldx;
        double mean = 0, var = 0, mabs = 0;
        for (int j = 0; j < d; j++) {
            mean += xr[j];
            mabs += fabs(xr[j]);
        }
        mean /= d;
        mabs /= d;
        for (int j = 0; j < d; j++)
            var += (xr[j] - mean) * (xr[j] - mean);
        double rstd = 1.0 / sqrt(var / d + 1e-5);
        for (int j = 0; j < d; j++) {
            double xh = (xr[j] - mean) * rstd;
            double tol = REL_TOL * (fabs(xh * g[j]) + fabs(b[j]) + fabs(g[j]) * mabs * rstd) +
                         ABS_TOL;
            float got = o.y[(size_t)i * ldy + j];
            check_close(e, where, i, j, got, xh * g[j] + b[j], tol);
            check_vs_scalar(es, where, kern, i, j, got, os.y[(size_t)i * ldy + j], tol);
        }
    }
    check_guards(&o, where);
    free(os.base);
    free(o.base);
    free(b);
    free(g);
    free(x);
}

START_TEST(test_layernorm)
{
    const lm_kern *kern = kern_or_skip(_i, "layernorm");
    if (!kern)
        return;
    static const float offsets[] = {0.0f, 50.0f, -1000.0f};
    rng r = rng_stream(600 + (uint64_t)_i);
    errstat e = {0}, es = {0};
    int cases = 0;
    for (int t = 0; t < LEN(ew_n); t++)
        for (int v = 0; v < LEN(offsets); v++, cases++)
            check_layernorm_case(kern, &r, 1 + (t + v) % 4 * 2, ew_n[t], offsets[v], &e, &es);
    say_elementwise("layernorm", kern, cases, "d 1..300, M 1..7, mean 0/50/-1000, constant rows",
                    &e, &es);
}
END_TEST

static double gelu_ref(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

START_TEST(test_gelu)
{
    const lm_kern *kern = kern_or_skip(_i, "gelu");
    if (!kern)
        return;
    static const float special[] = {0.0f, -0.0f, 50.0f, -50.0f, 1e4f, -1e4f, 1e-30f, -1e-30f,
                                    10.0f, -10.0f, 5.5f, -5.5f, 1e-3f, -1e-3f, 3.0f, -3.0f};
    rng r = rng_stream(700 + (uint64_t)_i);
    errstat e = {0}, es = {0};
    for (int t = 0; t < LEN(ew_n); t++) {
        int n = ew_n[t], M = 1 + t % 3, ld = n + rng_int(&r, 0, 3);
        outbuf o = outbuf_new(&r, M, n, ld, 1);
        for (int i = 0; i < M * n; i++)
            o.y[(size_t)(i / n) * ld + i % n] =
                i < LEN(special) ? special[(i + t) % LEN(special)] : rng_f(&r, -10.0f, 10.0f);
        size_t cells = (size_t)(M + 2) * ld;
        float *in = xmalloc(cells * sizeof(float)), *sc = xmalloc(cells * sizeof(float));
        memcpy(in, o.base, cells * sizeof(float));
        memcpy(sc, o.base, cells * sizeof(float));
        kern->gelu(M, n, o.y, ld);
        lm_kern_get(LM_ISA_SCALAR)->gelu(M, n, sc + ld, ld);
        char where[64];
        snprintf(where, sizeof where, "gelu %s M=%d n=%d ld=%d x", kern->name, M, n, ld);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < n; j++) {
                size_t at = (size_t)(i + 1) * ld + j;
                double want = gelu_ref(in[at]), tol = REL_TOL * fabs(want) + ABS_TOL;
                /* this one names the input; check_close then records the error */
                CHECK(fabs(o.base[at] - want) <= tol, "%s: gelu(%.9g) = %.9g, reference %.9g",
                      where, (double)in[at], (double)o.base[at], want);
                check_close(&e, where, i, j, o.base[at], want, tol);
                check_vs_scalar(&es, where, kern, i, j, o.base[at], sc[at], tol);
            }
        check_guards(&o, where);
        free(sc);
        free(in);
        free(o.base);
    }
    say_elementwise("gelu", kern, LEN(ew_n), "x in [-10, 10], +-50, +-1e4, +-0, +-1e-30", &e,
                    &es);
}
END_TEST

typedef struct smcase {
    int M, L, causal, self;
    float scale, spread;
} smcase;

/* One row of `n` live logits (and a self logit, or NULL) in double. */
static void softmax_ref(const float *s, int n, const float *self, float scale, double *p,
                        double *pself)
{
    double mx = self ? (double)*self * scale : -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++)
        mx = fmax(mx, (double)s[i] * scale);
    for (int i = 0; i < n; i++)
        sum += p[i] = exp((double)s[i] * scale - mx);
    double es = self ? exp((double)*self * scale - mx) : 0.0;
    sum += es;
    for (int i = 0; i < n; i++)
        p[i] /= sum;
    *pself = es / sum;
}

static void check_softmax_case(const lm_kern *kern, rng *r, smcase c, errstat *e, errstat *es)
{
    int lds = c.L + rng_int(r, 1, 4);
    size_t cells = (size_t)(c.M + 2) * lds, nself = (size_t)c.M + 1;
    outbuf o = outbuf_new(r, c.M, c.L, lds, 0);
    for (int i = 0; i < c.M; i++)
        for (int j = 0; j < c.L; j++)
            o.y[(size_t)i * lds + j] = rng_f(r, -c.spread, c.spread);
    float *self = matrix_new(r, 1, c.M, c.M + 1, -c.spread, c.spread); /* self[M]: POISON */
    float *in = xmalloc(cells * sizeof(float)), *sc = xmalloc(cells * sizeof(float));
    float *in_self = xmalloc(nself * sizeof(float)), *sc_self = xmalloc(nself * sizeof(float));
    double *p = xmalloc(((size_t)c.L + 1) * sizeof(double));
    memcpy(in, o.base, cells * sizeof(float));
    memcpy(sc, o.base, cells * sizeof(float));
    memcpy(in_self, self, nself * sizeof(float));
    memcpy(sc_self, self, nself * sizeof(float));
    kern->softmax(c.M, c.L, o.y, lds, c.self ? self : NULL, c.scale, c.causal);
    lm_kern_get(LM_ISA_SCALAR)->softmax(c.M, c.L, sc + lds, lds, c.self ? sc_self : NULL,
                                        c.scale, c.causal);
    char where[112];
    snprintf(where, sizeof where, "softmax %s M=%d L=%d lds=%d causal=%d self=%d scale=%g s",
             kern->name, c.M, c.L, lds, c.causal, c.self, (double)c.scale);
    for (int i = 0; i < c.M; i++) {
        int n = c.causal ? (i + 1 < c.L ? i + 1 : c.L) : c.L;
        const float *row = o.y + (size_t)i * lds, *sc_row = sc + (size_t)(i + 1) * lds;
        double pself, sum = 0.0;
        softmax_ref(in + (size_t)(i + 1) * lds, n, c.self ? &in_self[i] : NULL, c.scale, p,
                    &pself);
        for (int j = n; j < c.L; j++)
            CHECK(same_f32(row[j], 0.0f), "%s: [%d][%d] = %.9g, past the causal diagonal; "
                  "expected 0", where, i, j, (double)row[j]);
        for (int j = 0; j < n; j++) {
            double tol = REL_TOL * p[j] + ABS_TOL / 10;
            sum += row[j];
            check_close(e, where, i, j, row[j], p[j], tol);
            check_vs_scalar(es, where, kern, i, j, row[j], sc_row[j], tol);
        }
        if (c.self) {
            double tol = REL_TOL * pself + ABS_TOL / 10;
            sum += self[i];
            check_close(e, where, i, -1, self[i], pself, tol);
            check_vs_scalar(es, where, kern, i, -1, self[i], sc_self[i], tol);
        }
        CHECK(c.self || same_f32(self[i], in_self[i]), "%s: self is NULL, self[%d] changed",
              where, i);
        CHECK((n == 0 && !c.self) || fabs(sum - 1.0) <= 1e-5, "%s: row %d sums to %.9f", where,
              i, sum);
    }
    CHECK(same_f32(self[c.M], POISON), "%s: wrote self[%d], past M", where, c.M);
    check_guards(&o, where);
    free(p);
    free(sc_self);
    free(in_self);
    free(sc);
    free(in);
    free(self);
    free(o.base);
}

START_TEST(test_softmax)
{
    const lm_kern *kern = kern_or_skip(_i, "softmax");
    if (!kern)
        return;
    static const int Ls[] = {0, 1, 2, 3, 15, 16, 17, 33, 100, 257};
    static const float scales[] = {1.0f, 0.125f, 2.5f};
    /* logits far past exp's range: only the max subtraction keeps it finite */
    static const smcase wide[] = {{3, 40, 0, 1, 1.0f, 200.0f}, {5, 33, 1, 0, 3.0f, 100.0f},
                                  {4, 0, 1, 1, 1.0f, 200.0f}};
    rng r = rng_stream(800 + (uint64_t)_i);
    errstat e = {0}, es = {0};
    int cases = 0;
    for (int t = 0; t < LEN(Ls); t++)
        for (int v = 0; v < 4; v++, cases++) {
            smcase c = {.L = Ls[t], .causal = v & 1, .self = v >> 1,
                        .scale = scales[(t + v) % 3], .spread = 8.0f};
            c.M = c.causal ? c.L + 2 : 1 + (t + v) % 5;
            check_softmax_case(kern, &r, c, &e, &es);
        }
    for (int w = 0; w < LEN(wide); w++, cases++)
        check_softmax_case(kern, &r, wide[w], &e, &es);
    say_elementwise("softmax", kern, cases,
                    "L 0..257 (0 with self), plain/causal (M > L)/self, scale 1/0.125/2.5/3, "
                    "logits to +-200; rows sum to 1, causal zeros",
                    &e, &es);
}
END_TEST

START_TEST(test_rowdot)
{
    const lm_kern *kern = kern_or_skip(_i, "rowdot");
    if (!kern)
        return;
    rng r = rng_stream(900 + (uint64_t)_i);
    errstat e = {0}, es = {0};
    for (int t = 0; t < LEN(ew_n); t++) {
        int n = ew_n[t], M = 1 + t % 9, ld = n + rng_int(&r, 0, 5);
        float *a = matrix_new(&r, M, n, ld, -2.0f, 2.0f);
        float *b = matrix_new(&r, M, n, ld, -2.0f, 2.0f);
        outbuf o = outbuf_new(&r, 1, M, M, 0), os = outbuf_new(&r, 1, M, M, 0);
        kern->rowdot(M, n, a, b, ld, o.y);
        lm_kern_get(LM_ISA_SCALAR)->rowdot(M, n, a, b, ld, os.y);
        char where[64];
        snprintf(where, sizeof where, "rowdot %s M=%d n=%d ld=%d out", kern->name, M, n, ld);
        for (int i = 0; i < M; i++) {
            double want = 0.0, mag = 0.0;
            for (int j = 0; j < n; j++) {
                double t2 = (double)a[(size_t)i * ld + j] * b[(size_t)i * ld + j];
                want += t2;
                mag += fabs(t2);
            }
            double tol = REL_TOL * mag + ABS_TOL;
            check_close(&e, where, 0, i, o.y[i], want, tol);
            check_vs_scalar(&es, where, kern, 0, i, o.y[i], os.y[i], tol);
        }
        check_guards(&o, where);
        free(os.base);
        free(o.base);
        free(b);
        free(a);
    }
    say_elementwise("rowdot", kern, LEN(ew_n), "n 1..300, M 1..9, ld >= n", &e, &es);
}
END_TEST

START_TEST(test_rowaxpy)
{
    const lm_kern *kern = kern_or_skip(_i, "rowaxpy");
    if (!kern)
        return;
    rng r = rng_stream(1000 + (uint64_t)_i);
    errstat e = {0}, es = {0};
    for (int t = 0; t < LEN(ew_n); t++) {
        int n = ew_n[t], M = 1 + t % 9, ldx = n + rng_int(&r, 0, 5), ldy = n + rng_int(&r, 1, 5);
        float *x = matrix_new(&r, M, n, ldx, -2.0f, 2.0f);
        float *alpha = matrix_new(&r, 1, M, M, -3.0f, 3.0f);
        outbuf o = outbuf_new(&r, M, n, ldy, 1);
        size_t cells = (size_t)(M + 2) * ldy;
        float *old = xmalloc(cells * sizeof(float)), *sc = xmalloc(cells * sizeof(float));
        memcpy(old, o.base, cells * sizeof(float));
        memcpy(sc, o.base, cells * sizeof(float));
        kern->rowaxpy(M, n, alpha, x, ldx, o.y, ldy);
        lm_kern_get(LM_ISA_SCALAR)->rowaxpy(M, n, alpha, x, ldx, sc + ldy, ldy);
        char where[80];
        snprintf(where, sizeof where, "rowaxpy %s M=%d n=%d ldx=%d ldy=%d y", kern->name, M, n,
                 ldx, ldy);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < n; j++) {
                size_t at = (size_t)(i + 1) * ldy + j;
                double ax = (double)alpha[i] * x[(size_t)i * ldx + j];
                double tol = REL_TOL * (fabs(old[at]) + fabs(ax)) + ABS_TOL;
                check_close(&e, where, i, j, o.base[at], old[at] + ax, tol);
                check_vs_scalar(&es, where, kern, i, j, o.base[at], sc[at], tol);
            }
        check_guards(&o, where);
        free(sc);
        free(old);
        free(o.base);
        free(alpha);
        free(x);
    }
    say_elementwise("rowaxpy", kern, LEN(ew_n), "n 1..300, M 1..9, ldx/ldy >= n", &e, &es);
}
END_TEST

/* ---- every kernel at the edge of a page ---------------------------------------------- */

/* A buffer of `bytes` whose last byte sits just before an inaccessible
 * page: touching one element past it faults, in the plain build too. */
typedef struct edge {
    void *map;
    size_t len;
} edge;

static void *edge_new(edge *e, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), body = (bytes + page - 1) / page * page;
    e->len = body + page;
    e->map = mmap(NULL, e->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(e->map != MAP_FAILED, "mmap(%zu) failed", e->len);
    CHECK(mprotect((char *)e->map + body, page, PROT_NONE) == 0, "mprotect failed");
    return (char *)e->map + body - bytes;
}

static float *edge_floats(edge *e, rng *r, int count, float lo, float hi)
{
    float *f = edge_new(e, (size_t)count * sizeof(float));
    for (int i = 0; i < count; i++)
        f[i] = rng_f(r, lo, hi);
    return f;
}

/* Dense rows (ld = width), so each matrix ends exactly at its last element.
 * What this adds to the tests above is the fault: a kernel that loads or
 * stores a whole vector where fewer elements are left. Check reports a
 * fault "after" the last checkpoint: the line of the call that made it. */
#define EDGE_CALL(call)                                                                  \
    do {                                                                                 \
        mark_point();                                                                    \
        call;                                                                            \
    } while (0)

static void run_at_page_edges(const lm_kern *kern, rng *r, int M, int n, int k)
{
    enum { X, Q, S, BIAS, Y, G, B, YK, N_EDGE };
    edge e[N_EDGE];
    int kp = lm_round_up(k, LM_KALIGN);
    int8_t *wq = xmalloc((size_t)n * k);
    float *wscale = matrix_new(r, 1, n, n, 1e-3f, 1e-2f), *wf = matrix_new(r, n, k, k, -1, 1);
    for (int i = 0; i < n * k; i++)
        wq[i] = rng_i8(r);
    void *qmem = alloc64(lm_pq8_bytes(n, k)), *fmem = alloc64(lm_pf32_bytes(n, k));
    lm_pq8 w;
    lm_pf32 pw;
    lm_pq8_pack(&w, qmem, wq, wscale, n, k);
    lm_pf32_pack(&pw, fmem, wf, n, k);

    float *x = edge_floats(&e[X], r, M * k, -1, 1), *bias = edge_floats(&e[BIAS], r, n, -1, 1);
    float *s = edge_new(&e[S], (size_t)M * sizeof(float));
    int8_t *q = edge_new(&e[Q], (size_t)M * kp);
    float *y = edge_floats(&e[Y], r, M * n, -1, 1);
    float *g = edge_floats(&e[G], r, k, 0.5f, 1.5f), *b = edge_floats(&e[B], r, k, -1, 1);
    float *yk = edge_new(&e[YK], (size_t)M * k * sizeof(float));
    EDGE_CALL(kern->quant_rows(M, k, x, k, q, kp, s));
    EDGE_CALL(kern->qgemm(M, q, s, &w, bias, y, n, 1));
    EDGE_CALL(kern->sgemm(M, x, k, &pw, bias, y, n, 1));
    EDGE_CALL(kern->layernorm(M, k, x, k, g, b, yk, k));
    EDGE_CALL(kern->gelu(M, k, yk, k));
    EDGE_CALL(kern->rowdot(M, k, x, yk, k, s));
    EDGE_CALL(kern->rowaxpy(M, k, s, x, k, yk, k));
    EDGE_CALL(kern->softmax(M, k, yk, k, NULL, 1.0f, 1));
    EDGE_CALL(kern->softmax(M, k, yk, k, s, 0.5f, 0));
    for (int i = 0; i < M; i++) {
        double sum = s[i];
        for (int j = 0; j < k; j++)
            sum += yk[(size_t)i * k + j];
        CHECK(fabs(sum - 1.0) <= 1e-5, "edges %s M=%d k=%d: softmax row %d sums to %.9f",
              kern->name, M, k, i, sum);
    }
    for (int i = 0; i < N_EDGE; i++)
        munmap(e[i].map, e[i].len);
    free(fmem);
    free(qmem);
    free(wf);
    free(wscale);
    free(wq);
}

START_TEST(test_page_edges)
{
    const lm_kern *kern = kern_or_skip(_i, "edges");
    if (!kern)
        return;
    static const int shapes[][3] = {{1, 1, 1}, {3, 17, 7}, {2, 33, 17}, {5, 7, 65}, {9, 20, 33}};
    rng r = rng_stream(1100 + (uint64_t)_i);
    for (int t = 0; t < LEN(shapes); t++)
        run_at_page_edges(kern, &r, shapes[t][0], shapes[t][1], shapes[t][2]);
    say("edges      %-7s: every kernel with each input and output ending at an inaccessible "
        "page (M 1..9, n/k 1..65): no access past the end", kern->name);
}
END_TEST

/* ---- the kernels on the thread pool ------------------------------------------------ */

/* The scorer's use: the item table in one-panel views, one task each, on
 * the pool; the result must not depend on the split. */
typedef struct split_ctx {
    const lm_kern *kern;
    const qprob *p;
    float *y;
    int ldy;
} split_ctx;

static void split_task(void *ctx, int task, int thread)
{
    split_ctx *c = ctx;
    lm_pq8 v = lm_pq8_view(&c->p->w, task, 1);
    int j0 = task * LM_PANEL;
    (void)thread;
    c->kern->qgemm(c->p->M, c->p->q, c->p->s, &v, c->p->bias + j0, c->y + j0, c->ldy, 0);
}

START_TEST(test_pool_qgemm_split)
{
    const lm_kern *kern = lm_kern_get(lm_isa_default());
    rng r = rng_stream(1300);
    qprob qp = qprob_new(&r, 5, 203, 129, Q_RANDOM);
    int ldy = qp.n + 1;
    outbuf whole = outbuf_new(&r, qp.M, qp.n, ldy, 0), parts = outbuf_new(&r, qp.M, qp.n, ldy, 0);
    kern->qgemm(qp.M, qp.q, qp.s, &qp.w, qp.bias, whole.y, ldy, 0);
    char err[CM_ERRSZ] = "";
    lm_pool *p = NULL;
    CHECK(lm_pool_new(&p, 4, err, sizeof err) == 0, "lm_pool_new(4): %s", err);
    split_ctx c = {.kern = kern, .p = &qp, .y = parts.y, .ldy = ldy};
    for (int rep = 0; rep < 3; rep++) {
        lm_pool_run(p, split_task, &c, qp.w.n_panels);
        check_same_result("qgemm in one-panel tasks on a pool of 4", &whole, &parts);
    }
    lm_pool_free(p);
    free(parts.base);
    free(whole.base);
    qprob_free(&qp);
    say("pool       qgemm  : %s, 203 columns in 13 one-panel tasks on 4 threads: bit-identical "
        "to one call", kern->name);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------- */

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc;

    tc = tcase_create("pack");
    tcase_add_test(tc, test_pack_pf32);
    tcase_add_test(tc, test_pack_pq8);
    suite_add_tcase(s, tc);

    tc = tcase_create("quantize_ref");
    tcase_add_test(tc, test_quantize_ref_cases);
    tcase_add_test(tc, test_quantize_ref_random);
    tcase_add_test(tc, test_quantize_ref_tiny);
    suite_add_tcase(s, tc);

    /* Per ISA, the loop index being the lm_isa; tables this CPU cannot run
     * say they were skipped. Timeouts allow for ASan builds. */
    tc = tcase_create("int8");
    tcase_add_loop_test(tc, test_quant_rows, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_quant_rows_tiny, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_qgemm, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_qgemm_extreme, 0, LM_ISA_COUNT);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("fp32");
    tcase_add_loop_test(tc, test_sgemm, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_gemm_views, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_layernorm, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_gelu, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_softmax, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_rowdot, 0, LM_ISA_COUNT);
    tcase_add_loop_test(tc, test_rowaxpy, 0, LM_ISA_COUNT);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("edges");
    tcase_add_loop_test(tc, test_page_edges, 0, LM_ISA_COUNT);
    suite_add_tcase(s, tc);

    tc = tcase_create("pool");
    tcase_add_test(tc, test_pool_qgemm_split);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    printf("check_kernels: seed 0x%016llx, lm_isa_detect %s\n", (unsigned long long)SEED,
           lm_isa_name(lm_isa_detect()));
    fflush(stdout);
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
