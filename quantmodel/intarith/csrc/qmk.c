/* quantmodel C kernels: the emulator's elementwise integer pipelines as single loops (see ckernels.py for why
   and for how they are built). Every loop performs the same IEEE operations in the same order as the eager
   torch code it replaces; build flags forbid anything that could change a value (no -ffast-math,
   -ffp-contract=off).

   Portability: the code is C11 with _Float16 (qmk.h). x86 intrinsics are used only inside the guards below
   (AVX-512 F+BW+VL, else AVX2, else F16C); every guarded block has a plain C loop after it that computes the
   same values, so a build for any CPU (or -march=x86-64, or a non-x86 machine) gives the same results. */
#include <math.h>
#include <string.h>

#include "qmk.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
/* the AVX-512 blocks use masked 16-bit loads and 32->8-bit narrowing: F, BW and VL together */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define QMK_AVX512 1
#endif

#define BLK 1024  /* elements per stack buffer of the fp16 conversions */
/* Row / block loops run on torch's OpenMP threads (the same libgomp, so torch.set_num_threads applies)
   when a call has at least PAR_MIN elements: each row or block is computed by the same operations as
   serially, only by another thread, so the values are unchanged. Without -fopenmp the pragmas are ignored. */
#define PAR_MIN 16384
#ifdef _OPENMP
#include <omp.h>
#define NTHR omp_get_max_threads()
#else
#define NTHR 1
#endif
#define PAR_FOR _Pragma("omp parallel for schedule(static)")
/* the loop on the threads when cond, else the same loop compiled plainly (no outlined-function cost) */
#define PAR_LOOP(cond, ...) if (cond) { PAR_FOR __VA_ARGS__ } else { __VA_ARGS__ }
/* the statements once per thread, with [lo, hi) the thread's share of [0, total) */
#ifdef _OPENMP
#define PAR_RANGE(total, ...) _Pragma("omp parallel") { int64_t _nt = omp_get_num_threads(), _id = omp_get_thread_num(); \
    int64_t lo = (total) * _id / _nt, hi = (total) * (_id + 1) / _nt; __VA_ARGS__ }
#else
#define PAR_RANGE(total, ...) { int64_t lo = 0, hi = (total); __VA_ARGS__ }
#endif

/* fp16 <-> fp32 conversions of a block (exact widening; narrowing rounds to nearest even, as a
   C cast does): F16C/AVX-512 instructions where available (gcc does not vectorise _Float16 casts). */
static void h2f(const f16* in, float* out, int64_t n) {
    int64_t i = 0;
#if defined(QMK_AVX512)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(in + i))));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, in + i)));
        return;
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i))));
#endif
    for (; i < n; i++) out[i] = (float)in[i];
}

static void f2h(const float* in, f16* out, int64_t n) {
    int64_t i = 0;
#if defined(QMK_AVX512)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(out + i, k, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, in + i),
                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        return;
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) out[i] = (f16)in[i];
}

/* round_half_even(x * m / 2**s) in int64 for 1 <= s <= 62, |x * m| < 2**62 (fixedpoint.rounding_right_shift) */
static inline int64_t rrs(int64_t x, int64_t m, int64_t s) {
    int64_t p = x * m;
    int64_t lsb = (p >> s) & 1;
    return (p + lsb + ((((int64_t)1) << (s - 1)) - 1)) >> s;
}

/* clamp of a non-NaN value, written as two selects so that they compile to vmax/vmin */
static inline double clampd(double v, double lo, double hi) { v = v < lo ? lo : v; v = v > hi ? hi : v; return v; }
static inline float clampf(float v, float lo, float hi) { v = v < lo ? lo : v; v = v > hi ? hi : v; return v; }

/* rh: round every float of b to fp16 and back (one fp16 rounding per step, as torch's fp16 ops);
   done blockwise with F16C/AVX-512 instructions because gcc does not vectorise _Float16 casts */
static void rh(float* b, int64_t n) {
    int64_t i = 0;
#if defined(QMK_AVX512)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(b + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(b + i),
                                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(b + i, k, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, b + i),
                                                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        return;
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(b + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(b + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; i++) b[i] = (float)(f16)b[i];
}

/* Requantizer: out[r, j] = clamp(rint((acc[r, j] + bias[j]) * c[j]), qmin, qmax), elements with
   |v - rint(v)| >= lim[j] recomputed exactly (lim NULL: no channel needs the check); out kinds 0 int8, 1 int16, 2 int32, 3 float64.
   acc rows are acc_stride apart, out rows out_stride apart (column blocks of a wider output). */
#define RQ_BODY(OT) PAR_LOOP(par, RQ_ROWS(OT))
#define RQ_ROWS(OT)                                                                                   \
    for (int64_t r = 0; r < rows; r++) {                                                              \
        const int32_t* a = acc + r * acc_stride;                                                      \
        OT* o = ((OT*)out) + r * out_stride;                                                          \
        int any = 0;                                                                                  \
        if (!lim) { /* every channel safe: no near-tie check */                                       \
            if (bias)                                                                                 \
                for (int64_t j = 0; j < n; j++)                                                       \
                    o[j] = (OT)clampd(rint((double)(a[j] + bias[j]) * c[j]), qmin, qmax);             \
            else                                                                                      \
                for (int64_t j = 0; j < n; j++) o[j] = (OT)clampd(rint((double)a[j] * c[j]), qmin, qmax); \
        } else if (bias) {                                                                            \
            for (int64_t j = 0; j < n; j++) {                                                         \
                double v = (double)(a[j] + bias[j]) * c[j];                                           \
                double t = rint(v);                                                                   \
                any |= fabs(v - t) >= lim[j];                                                         \
                o[j] = (OT)clampd(t, qmin, qmax);                                                     \
            }                                                                                         \
        } else {                                                                                      \
            for (int64_t j = 0; j < n; j++) {                                                         \
                double v = (double)a[j] * c[j];                                                       \
                double t = rint(v);                                                                   \
                any |= fabs(v - t) >= lim[j];                                                         \
                o[j] = (OT)clampd(t, qmin, qmax);                                                     \
            }                                                                                         \
        }                                                                                             \
        if (any) {                                                                                    \
            for (int64_t j = 0; j < n; j++) {                                                         \
                int64_t x = (int64_t)a[j] + (bias ? bias[j] : 0);                                     \
                double v = (double)x * c[j];                                                          \
                if (fabs(v - rint(v)) >= lim[j])                                                      \
                    o[j] = (OT)clampd((double)rrs(x, m[j], s[j]), qmin, qmax);                        \
            }                                                                                         \
        }                                                                                             \
    }

void qm_requant(const int32_t* acc, int64_t rows, int64_t n, int64_t acc_stride, const int32_t* bias,
                const double* c, const double* lim, const int64_t* m, const int64_t* s,
                double qmin, double qmax, void* out, int out_kind, int64_t out_stride) {
    int par = rows > 1 && rows * n >= PAR_MIN && NTHR > 1;
    if (out_kind == 0) { RQ_BODY(int8_t) }
    else if (out_kind == 1) { RQ_BODY(int16_t) }
    else if (out_kind == 2) { RQ_BODY(int32_t) }
    else { RQ_BODY(double) }
}

/* ActQuantizer: q = rint(clamp(fp32(x) * recip, -qmax, qmax)); in kinds 0 f32, 1 f16; out 0 i8, 1 i16, 2 i32.
   chmul (optional, float32 holding fp16 values, one per channel of the last dim c): first the fp16-mode
   SmoothQuant multiply x = h(h(x) * chmul[j]) (emulator._input_int8). act_quant has the bounds lo, hi and
   an integer offset added after rounding (ZeroPointActQuantizer: clamp(x * recip, lo, hi) rounded, + z;
   integer bounds, so clamping before rounding gives the same codes); qm_act_quant: -qmax, qmax, 0. */
#define AQ_BODY(OT)                                                                                   \
    for (int64_t i = 0; i < k; i++) o[i] = (OT)(rintf(clampf(xs[i] * recip, lo, hi)) + zero);

static void act_quant(const void* x, int in_kind, int64_t n, float recip, float lo, float hi, float zero, void* out,
                      int out_kind, const float* chmul, int64_t c);

void qm_act_quant(const void* x, int in_kind, int64_t n, float recip, float qmax, void* out, int out_kind,
                  const float* chmul, int64_t c) {
    act_quant(x, in_kind, n, recip, -qmax, qmax, 0.0f, out, out_kind, chmul, c);
}

void qm_act_quant_zp(const void* x, int in_kind, int64_t n, float recip, float lo, float hi, float zero, int8_t* out,
                     const float* chmul, int64_t c) {
    act_quant(x, in_kind, n, recip, lo, hi, zero, out, 0, chmul, c);
}

static void act_quant(const void* x, int in_kind, int64_t n, float recip, float lo, float hi, float zero, void* out,
                      int out_kind, const float* chmul, int64_t c) {
    int64_t step = chmul ? (c < BLK ? c : BLK) : BLK;  /* with chmul: chunks never cross a row */
    int64_t rn = chmul ? c : n, rows = chmul ? (c > 0 ? n / c : 0) : 1;
    int64_t nch = rn > 0 ? (rn + step - 1) / step : 0, tot = rows * nch;
    int par = tot > 1 && n >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t ch = 0; ch < tot; ch++) {
        float buf[BLK];
        int64_t j0 = (ch % nch) * step;
        int64_t i0 = (ch / nch) * rn + j0;
        int64_t k = rn - j0 < step ? rn - j0 : step;
        const float* xs = (const float*)x + i0;
        if (in_kind == 1) { h2f((const f16*)x + i0, buf, k); xs = buf; }
        if (chmul) {
            if (in_kind == 0) { for (int64_t i = 0; i < k; i++) buf[i] = xs[i]; rh(buf, k); }
            for (int64_t i = 0; i < k; i++) buf[i] = buf[i] * chmul[j0 + i];
            rh(buf, k);
            xs = buf;
        }
        if (out_kind == 0) { int8_t* o = (int8_t*)out + i0; AQ_BODY(int8_t) }
        else if (out_kind == 1) { int16_t* o = (int16_t*)out + i0; AQ_BODY(int16_t) }
        else { int32_t* o = (int32_t*)out + i0; AQ_BODY(int32_t) }
    })
}

/* dequantize: fp32(q) * scale (exact product rounded once: |q| < 2**24, scale a float32 value);
   out kinds 0 float32, 1 float16 saturated to +-65504. in kinds 0 i8, 1 i16, 2 i32.
   Returns 1 (nothing trustworthy written) if an int32 code has |q| >= 2**24. */
#define DQ_BODY(IT) PAR_LOOP(par, DQ_BLOCKS(IT))
#define DQ_BLOCKS(IT)                                                                                 \
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {                                                         \
        float buf[BLK];                                                                               \
        int64_t k = n - i0 < BLK ? n - i0 : BLK;                                                      \
        const IT* qs = (const IT*)q + i0;                                                             \
        if (out_kind == 0) {                                                                          \
            float* o = (float*)out + i0;                                                              \
            for (int64_t i = 0; i < k; i++) o[i] = (float)qs[i] * scale;                              \
        } else {                                                                                      \
            for (int64_t i = 0; i < k; i++) buf[i] = clampf((float)qs[i] * scale, -65504.0f, 65504.0f); \
            f2h(buf, (f16*)out + i0, k);                                                              \
        }                                                                                             \
    }

int qm_dequant(const void* q, int in_kind, int64_t n, float scale, void* out, int out_kind) {
    int par = n >= PAR_MIN && NTHR > 1;
    if (in_kind == 0) { DQ_BODY(int8_t) }
    else if (in_kind == 1) { DQ_BODY(int16_t) }
    else {
        const int32_t* qi = (const int32_t*)q;
        int bad = 0;
        for (int64_t i = 0; i < n; i++) bad |= (qi[i] >= (1 << 24)) | (qi[i] <= -(1 << 24));
        if (bad) return 1;
        DQ_BODY(int32_t)
    }
    return 0;
}

/* fixedpoint.dequantize's definition for any scale: fp32(fl64(q) * s) of int32 codes (the float64 product of a
   32-bit integer and a double, rounded once to float32), for scales that are not float32 values. */
void qm_dequant_f64(const int32_t* q, int64_t n, double s, float* out) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)((double)q[i] * s);
}

/* ---- fp16 vector-unit kernels (intops fp16 mode): the same float32 operations in the same order ---- */
/* intops.tree_sum of n floats: zero-padded pairwise tree; t has room for n floats */
static float tree_sum_f(const float* x, int64_t n, float* t) {
    if (n <= 0) return 0.0f;
    if (n == 1) return x[0];
    int64_t width = 1;
    while (width < n) width <<= 1;
    int64_t h = width / 2, i;
    for (i = 0; i < n - h; i++) t[i] = x[i] + x[i + h];
    for (i = n - h; i < h; i++) t[i] = x[i] + 0.0f;  /* a real add of +0 (maps -0 to +0), as eager */
    while (h > 1) {
        h /= 2;
        for (i = 0; i < h; i++) t[i] += t[i + h];
    }
    return t[0];
}

/* LayerNorm statistics per row of fp16 x [rows, n]: mean = tree(x) / n, d = x - mean,
   ve = tree(d * d) / n + eps (all float32). ws: 3 * n floats. */
static void ln_stats_row(const f16* x, int64_t n, float eps, float* mean_out, float* ve_out, float* xf, float* d,
                         float* t) {
    h2f(x, xf, n);
    float mean = tree_sum_f(xf, n, t) / (float)n;
    for (int64_t i = 0; i < n; i++) { float di = xf[i] - mean; d[i] = di * di; }
    float var = tree_sum_f(d, n, t) / (float)n;
    *mean_out = mean;
    *ve_out = var + eps;
}

#define VLA_MAX 8192  /* rows up to this many floats get per-thread scratch on the stack (else serial) */
void qm_ln_stats(const f16* x, int64_t rows, int64_t n, float eps, float* mean_out, float* ve_out, float* ws) {
    if (rows > 1 && rows * n >= PAR_MIN && n <= VLA_MAX && NTHR > 1) {
        PAR_FOR
        for (int64_t r = 0; r < rows; r++) {
            float sc[3 * n];
            ln_stats_row(x + r * n, n, eps, mean_out + r, ve_out + r, sc, sc + n, sc + 2 * n);
        }
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        ln_stats_row(x + r * n, n, eps, mean_out + r, ve_out + r, ws, ws + n, ws + 2 * n);
}

/* LayerNorm output h((x - mean) * rstd) per row, then (mod != 0) the modulation h(h(y * a) + b) with
   a = h(1 + h(sc)), b = h(sh) per batch element (r / rows_per_batch), where sc, sh are the float32
   scale and shift rows (row stride pstride) with the consumer's SmoothQuant factors folded in when inv
   is given: sc = ((1 + scale) * inv) - 1, sh = shift * inv (emulator._fold_mod, float32 ops). ws: 4 * n. */
static void ln_mod_params(const float* scale, const float* shift, int64_t pstride, const float* inv, int64_t bi,
                          int64_t n, float* af, float* bf) {
    const float* sc = scale + bi * pstride; const float* sh = shift + bi * pstride;
    if (inv) {
        for (int64_t i = 0; i < n; i++) { af[i] = ((1.0f + sc[i]) * inv[i]) - 1.0f; bf[i] = sh[i] * inv[i]; }
    } else {
        for (int64_t i = 0; i < n; i++) { af[i] = sc[i]; bf[i] = sh[i]; }
    }
    rh(af, n);
    for (int64_t i = 0; i < n; i++) af[i] = 1.0f + af[i];
    rh(af, n);
    rh(bf, n);
}

static void ln_apply_row(const f16* x, int64_t n, float m, float s, const float* af, const float* bf, float* xf,
                         float* y, void* out, float qrecip, float qmax) {
    h2f(x, xf, n);
    for (int64_t i = 0; i < n; i++) y[i] = (xf[i] - m) * s;
    if (af) {
        rh(y, n);
        for (int64_t i = 0; i < n; i++) y[i] = y[i] * af[i];
        rh(y, n);
        for (int64_t i = 0; i < n; i++) y[i] = y[i] + bf[i];
    }
    if (qmax > 0) {  /* straight into the consumer's activation quantizer: q = rint(clamp(h(y) * recip)) */
        rh(y, n);
        int8_t* o = (int8_t*)out;
        for (int64_t i = 0; i < n; i++) o[i] = (int8_t)rintf(clampf(y[i] * qrecip, -qmax, qmax));
    } else f2h(y, (f16*)out, n);
}

void qm_ln_apply(const f16* x, int64_t rows, int64_t n, const float* mean, const float* rstd, void* out,
                 int mod, const float* scale, const float* shift, int64_t pstride, const float* inv,
                 int64_t rows_per_batch, float* ws, float qrecip, float qmax) {
    int64_t osz = qmax > 0 ? 1 : 2;  /* int8 codes (qmax > 0) or fp16 values out */
    int64_t nb = mod ? (rows + rows_per_batch - 1) / rows_per_batch : 0;
    if (rows > 1 && rows * n >= PAR_MIN && n <= VLA_MAX && nb * n <= 4 * VLA_MAX && NTHR > 1) {
        float ab[2 * (nb > 0 ? nb : 1) * n];  /* per batch element: a [n], b [n] */
        for (int64_t bi = 0; bi < nb; bi++) ln_mod_params(scale, shift, pstride, inv, bi, n, ab + 2 * bi * n,
                                                          ab + (2 * bi + 1) * n);
        PAR_FOR
        for (int64_t r = 0; r < rows; r++) {
            float sc[2 * n];
            int64_t bi = mod ? r / rows_per_batch : 0;
            ln_apply_row(x + r * n, n, mean[r], rstd[r], mod ? ab + 2 * bi * n : 0, ab + (2 * bi + 1) * n, sc,
                         sc + n, (char*)out + r * n * osz, qrecip, qmax);
        }
        return;
    }
    float* xf = ws; float* af = ws + n; float* bf = ws + 2 * n; float* y = ws + 3 * n;
    int64_t cur = -1;
    for (int64_t r = 0; r < rows; r++) {
        if (mod) {
            int64_t bi = r / rows_per_batch;
            if (bi != cur) { ln_mod_params(scale, shift, pstride, inv, bi, n, af, bf); cur = bi; }
        }
        ln_apply_row(x + r * n, n, mean[r], rstd[r], mod ? af : 0, bf, xf, y, (char*)out + r * n * osz, qrecip, qmax);
    }
}

/* fp16 residual add out = h(x + h(g * y)) (gate given) or h(x + y), x [B, N, C] fp16; y [B, N, C] as fp16
   (y_kind 1) or int8 / int16 codes (y_kind 0 / 2) dequantized on the fly to h(clamp(q * y_scale, +-65504));
   gate float32 rows [B, C] (row stride gstride), rounded to fp16 (h(gate)) before use. ws: 3 * c floats. */
static void residual_row(const f16* x, const void* y, int y_kind, float y_scale, const float* gf, int64_t off,
                         int64_t c, f16* out, float* xf, float* yf) {
    h2f(x + off, xf, c);
    if (y_kind == 1) h2f((const f16*)y + off, yf, c);
    else {
        if (y_kind == 0) { const int8_t* q = (const int8_t*)y + off;
            for (int64_t i = 0; i < c; i++) yf[i] = clampf((float)q[i] * y_scale, -65504.0f, 65504.0f); }
        else { const int16_t* q = (const int16_t*)y + off;
            for (int64_t i = 0; i < c; i++) yf[i] = clampf((float)q[i] * y_scale, -65504.0f, 65504.0f); }
        rh(yf, c);
    }
    if (gf) {
        for (int64_t i = 0; i < c; i++) yf[i] = gf[i] * yf[i];
        rh(yf, c);
    }
    for (int64_t i = 0; i < c; i++) xf[i] = xf[i] + yf[i];
    f2h(xf, out + off, c);
}

void qm_residual_fp16(const f16* x, const void* y, int y_kind, float y_scale, const float* gate, int64_t gstride,
                      int64_t bsz, int64_t nrow, int64_t c, f16* out, float* ws) {
    int64_t rows = bsz * nrow;
    if (rows > 1 && rows * c >= PAR_MIN && c <= VLA_MAX && bsz * c <= 4 * VLA_MAX && NTHR > 1) {
        float gall[(gate ? bsz : 1) * c];  /* h(gate) rows */
        if (gate)
            for (int64_t b = 0; b < bsz; b++) {
                for (int64_t i = 0; i < c; i++) gall[b * c + i] = gate[b * gstride + i];
                rh(gall + b * c, c);
            }
        PAR_FOR
        for (int64_t r = 0; r < rows; r++) {
            float sc[2 * c];
            residual_row(x, y, y_kind, y_scale, gate ? gall + (r / nrow) * c : 0, r * c, c, out, sc, sc + c);
        }
        return;
    }
    float* xf = ws; float* yf = ws + c; float* gf = ws + 2 * c;
    for (int64_t b = 0; b < bsz; b++) {
        if (gate) {
            for (int64_t i = 0; i < c; i++) gf[i] = gate[b * gstride + i];
            rh(gf, c);
        }
        for (int64_t r = 0; r < nrow; r++)
            residual_row(x, y, y_kind, y_scale, gate ? gf : 0, (b * nrow + r) * c, c, out, xf, yf);
    }
}

/* softmax step 1: s = h(clamp(x * scale)) (x float32, scaled; or fp16 x when x_f16), then per row
   d = h(s - max(s)), written as float32 to dbuf [rows, n] (torch.exp runs on it next). */
static void softmax_pre_rows(const void* x, int x_f16, float scale, int scaled, int64_t r0, int64_t r1, int64_t n,
                             float* dbuf) {
    int64_t i0 = r0 * n, tot = (r1 - r0) * n;  /* rows r0..r1: elementwise steps over the whole block */
    float* d = dbuf + i0;
    if (x_f16) h2f((const f16*)x + i0, d, tot);
    else {
        const float* xr = (const float*)x + i0;
        if (scaled) for (int64_t i = 0; i < tot; i++) d[i] = clampf(xr[i] * scale, -65504.0f, 65504.0f);
        else for (int64_t i = 0; i < tot; i++) d[i] = clampf(xr[i], -65504.0f, 65504.0f);
        rh(d, tot);
    }
    for (int64_t r = 0; r < r1 - r0; r++) {
        float* o = d + r * n;
        float mx = o[0];
        for (int64_t i = 1; i < n; i++) mx = o[i] > mx ? o[i] : mx;
        for (int64_t i = 0; i < n; i++) o[i] = o[i] - mx;
    }
    rh(d, tot);
}

void qm_softmax_pre(const void* x, int x_f16, float scale, int scaled, int64_t rows, int64_t n, float* dbuf) {
    if (rows > 1 && rows * n >= PAR_MIN && NTHR > 1) {
        PAR_RANGE(rows, softmax_pre_rows(x, x_f16, scale, scaled, lo, hi, n, dbuf);)
    } else softmax_pre_rows(x, x_f16, scale, scaled, 0, rows, n, dbuf);
}

/* softmax step 2: e = h(exp(d)) (torch's exp in ebuf, overwritten), per row r = 1 / tree(e),
   out = h(e * r) (out NULL: the fp16 values stay in ebuf as float32, an exact widening). ws: n floats. */
static void softmax_post_rows(float* ebuf, int64_t r0, int64_t r1, int64_t n, f16* out, float* t) {
    int64_t i0 = r0 * n, tot = (r1 - r0) * n;
    float* e = ebuf + i0;
    rh(e, tot);
    for (int64_t r = 0; r < r1 - r0; r++) {
        float* er = e + r * n;
        float rc = 1.0f / tree_sum_f(er, n, t);
        for (int64_t i = 0; i < n; i++) er[i] = er[i] * rc;
    }
    if (out) f2h(e, out + i0, tot);
    else rh(e, tot);
}

void qm_softmax_post(float* ebuf, int64_t rows, int64_t n, f16* out, float* ws) {
    if (rows > 1 && rows * n >= PAR_MIN && n <= VLA_MAX && NTHR > 1) {
        PAR_RANGE(rows, float t[n]; softmax_post_rows(ebuf, lo, hi, n, out, t);)
    } else softmax_post_rows(ebuf, 0, rows, n, out, ws);
}

/* attention operands straight from a GEMM's integer output: q [B, N, P, H, D] int8 / int16 codes (in_kind 0 / 1;
   2: fp16 values, with scale 1 an exact widening)
   dequantized as fp32(q) * scale (the dequantize loop's one float32 product) and split into P contiguous
   float32 tensors out + p * B*H*N*D, each [B, H, N, D], or [B, H, D, N] where bit p of tmask is set (K^T) */
/* Non-transposed parts: per token row and head, D codes converted straight into place. Transposed parts
   (K^T, [B, H, D, N]): per (b, h) in tiles of SPLIT_TT tokens, converted into a small buffer and written
   along N, so the stores stay contiguous. Independent rows / tiles: on several threads when the call is
   large (the same values). */
#define SPLIT_TT 16
#define SPLIT_DMAX 256
/* LOAD(dst, i): the D values at element i of q (one head of one token row) as float32 into dst */
#define SPLIT_BODY(LOAD)                                                                              \
    for (int64_t p = 0; p < P; p++) {                                                                 \
        float* o = out + p * per;                                                                     \
        if (!((tmask >> p) & 1)) {                                                                    \
            PAR_LOOP(par, for (int64_t bt = 0; bt < B * N; bt++) {                                    \
                int64_t b = bt / N, t = bt % N;                                                       \
                for (int64_t h = 0; h < H; h++)                                                       \
                    LOAD(o + ((b * H + h) * N + t) * D, (bt * P + p) * C + h * D)                     \
            })                                                                                        \
        } else {                                                                                      \
            int64_t ntile = (N + SPLIT_TT - 1) / SPLIT_TT;                                            \
            PAR_LOOP(par, for (int64_t job = 0; job < B * H * ntile; job++) {                         \
                float tmp[SPLIT_TT * SPLIT_DMAX];                                                     \
                int64_t bh = job / ntile, t0 = (job % ntile) * SPLIT_TT, b = bh / H, h = bh % H;      \
                int64_t nt = N - t0 < SPLIT_TT ? N - t0 : SPLIT_TT;                                   \
                for (int64_t tt = 0; tt < nt; tt++)                                                   \
                    LOAD(tmp + tt * D, ((b * N + t0 + tt) * P + p) * C + h * D)                       \
                for (int64_t d = 0; d < D; d++) {                                                     \
                    float* oo = o + (bh * D + d) * N + t0;                                            \
                    for (int64_t tt = 0; tt < nt; tt++) oo[tt] = tmp[tt * D + d];                     \
                }                                                                                     \
            })                                                                                        \
        }                                                                                             \
    }
#define SPLIT_I8(dst, i) { float* _o = (dst); const int8_t* _s = (const int8_t*)q + (i);              \
    for (int64_t d = 0; d < D; d++) _o[d] = (float)_s[d] * scale; }
#define SPLIT_I16(dst, i) { float* _o = (dst); const int16_t* _s = (const int16_t*)q + (i);            \
    for (int64_t d = 0; d < D; d++) _o[d] = (float)_s[d] * scale; }
/* fp16 values (in_kind 2): widened exactly (the scale is 1) by the block conversion */
#define SPLIT_F16(dst, i) h2f((const f16*)q + (i), (dst), D);

#define SPLIT_WIDE(IT)                                                                                \
    for (int64_t bt = 0; bt < B * N; bt++)                                                            \
        for (int64_t p = 0; p < P; p++) {                                                             \
            int64_t b = bt / N, t = bt % N;                                                           \
            const IT* src = (const IT*)q + (bt * P + p) * C;                                          \
            float* o = out + p * per;                                                                 \
            for (int64_t h = 0; h < H; h++) {                                                         \
                int tr = (tmask >> p) & 1;                                                            \
                float* oo = tr ? o + (b * H + h) * D * N + t : o + ((b * H + h) * N + t) * D;         \
                for (int64_t d = 0; d < D; d++) oo[tr ? d * N : d] = (float)src[h * D + d] * scale;   \
            }                                                                                         \
        }

/* attention output in [B, H, N, D] float32 to the next layer's int8 input [B, N, H * D]: the head merge and
   the activation quantizer q = rint(clamp(x * recip, -qmax, qmax)) (qm_act_quant's steps) in one pass;
   per token row, the heads are gathered first so the quantizer runs over C contiguous values */
void qm_merge_heads_quant(const float* in, int64_t B, int64_t H, int64_t N, int64_t D, float recip, float qmax,
                          int8_t* out) {
    int64_t C = H * D;
    if (C > BLK) {
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t t = 0; t < N; t++) {
                    const float* xs = in + ((b * H + h) * N + t) * D;
                    int8_t* o = out + (b * N + t) * C + h * D;
                    for (int64_t d = 0; d < D; d++) o[d] = (int8_t)rintf(clampf(xs[d] * recip, -qmax, qmax));
                }
        return;
    }
    int par = B * N > 1 && B * N * C >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t bt = 0; bt < B * N; bt++) {
        float buf[BLK];
        int64_t b = bt / N, t = bt % N;
        for (int64_t h = 0; h < H; h++) {
            const float* xs = in + ((b * H + h) * N + t) * D;
            for (int64_t d = 0; d < D; d++) buf[h * D + d] = xs[d];
        }
        int8_t* o = out + bt * C;
        for (int64_t i = 0; i < C; i++) o[i] = (int8_t)rintf(clampf(buf[i] * recip, -qmax, qmax));
    })
}

void qm_split_heads(const void* q, int in_kind, float scale, int64_t B, int64_t N, int64_t P, int64_t H,
                    int64_t D, float* out, int64_t tmask) {
    int64_t C = H * D, per = B * H * N * D;
    int par = B * N > 1 && B * N * P * C >= PAR_MIN && NTHR > 1;
    if (D > SPLIT_DMAX) {  /* heads wider than the tile buffer: element by element */
        if (in_kind == 0) { SPLIT_WIDE(int8_t) }
        else if (in_kind == 1) { SPLIT_WIDE(int16_t) }
        else { SPLIT_WIDE(f16) }
        return;
    }
    if (in_kind == 0) { SPLIT_BODY(SPLIT_I8) }
    else if (in_kind == 1) { SPLIT_BODY(SPLIT_I16) }
    else { SPLIT_BODY(SPLIT_F16) }
}

/* tanh-GELU step 1: inner = h(0.7978845608 * (x + h(0.044715 * h(x * x * x)))) as float32 (torch.tanh next);
   python scalars become float32 constants, as in torch's float32 ops */
void qm_gelu_pre(const f16* x, int64_t n, float* inner) {
    const float c1 = (float)0.044715, c2 = (float)0.7978845608028654;
    int par = n >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        float xf[BLK], t[BLK];
        int64_t k = n - i0 < BLK ? n - i0 : BLK;
        h2f(x + i0, xf, k);
        float* o = inner + i0;
        for (int64_t i = 0; i < k; i++) t[i] = xf[i] * xf[i] * xf[i];
        rh(t, k);
        for (int64_t i = 0; i < k; i++) t[i] = c1 * t[i];
        rh(t, k);
        for (int64_t i = 0; i < k; i++) o[i] = c2 * (xf[i] + t[i]);
        rh(o, k);
    })
}

/* tanh-GELU step 2: out = h((0.5 * x) * (1 + h(tanh))) */
void qm_gelu_post(const f16* x, int64_t n, const float* th, f16* out) {
    int par = n >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        float xf[BLK], y[BLK];
        int64_t k = n - i0 < BLK ? n - i0 : BLK;
        h2f(x + i0, xf, k);
        const float* t = th + i0;
        for (int64_t i = 0; i < k; i++) y[i] = t[i];
        rh(y, k);
        for (int64_t i = 0; i < k; i++) y[i] = (0.5f * xf[i]) * (1.0f + y[i]);
        f2h(y, out + i0, k);
    })
}

/* gated add x + h(g * y) (op 0) or modulate h(x * g) + y2 (op 1), each step rounded to fp16;
   x [B, N, C] fp16, y [B, N, C] fp16 (op 0), g / y2 fp16 [B, C] per batch element. ws: 4 * c floats. */
void qm_fp16_axpy(const f16* x, const f16* y, const f16* g, const f16* c2, int64_t bsz, int64_t nrow, int64_t c,
                  int op, f16* out, float* ws) {
    float* xf = ws; float* yf = ws + c; float* gf = ws + 2 * c; float* cf = ws + 3 * c;
    for (int64_t b = 0; b < bsz; b++) {
        h2f(g + b * c, gf, c);
        if (op == 1) h2f(c2 + b * c, cf, c);
        for (int64_t r = 0; r < nrow; r++) {
            int64_t off = (b * nrow + r) * c;
            h2f(x + off, xf, c);
            if (op == 0) {
                h2f(y + off, yf, c);
                for (int64_t i = 0; i < c; i++) yf[i] = gf[i] * yf[i];
                rh(yf, c);
                for (int64_t i = 0; i < c; i++) xf[i] = xf[i] + yf[i];
            } else {
                for (int64_t i = 0; i < c; i++) xf[i] = xf[i] * gf[i];
                rh(xf, c);
                for (int64_t i = 0; i < c; i++) xf[i] = xf[i] + cf[i];
            }
            f2h(xf, out + off, c);
        }
    }
}

/* ---- int mode kernels (intops, I-BERT style): integer arithmetic, identical integers by construction ---- */
static inline int64_t floordiv(int64_t a, int64_t b) {  /* b > 0 */
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static inline int64_t bitlen(int64_t v) { return v > 0 ? 64 - __builtin_clzll((uint64_t)v) : 0; }

static inline int64_t isqrt64(int64_t v) {  /* floor(sqrt(v)) for 0 <= v < 2**62 */
    int64_t r = (int64_t)sqrt((double)v);
    while (r > 0 && r * r > v) r--;
    while ((r + 1) * (r + 1) <= v) r++;
    return r;
}

/* intops.ln_eps_table: out[k] = floor(min(eps n / (S^2) / 4^k, 2^50)), k = 0..18, the same float64 operations in
   the same order. Returns 1 (nothing written) when a value is NaN (the caller's Python definition then raises). */
int qm_ln_eps_table(double scale, int64_t n, double eps, int64_t* out) {
    if (!(scale * scale != 0.0)) return 1;  /* Python raises ZeroDivisionError */
    double v0 = eps * (double)n / (scale * scale);
    int64_t t[19];
    for (int k = 0; k < 19; k++) {
        double v = v0 / ldexp(1.0, 2 * k);
        v = 0x1p50 < v ? 0x1p50 : v;
        if (v != v || v < -0x1p62) return 1;
        t[k] = (int64_t)floor(v);
    }
    memcpy(out, t, sizeof t);
    return 0;
}

/* intops.layernorm_int per row of int32 x [rows, n]; eps_k: the 19-entry ln_eps_table */
#if defined(__AVX2__) && !defined(__AVX512DQ__)
/* the variance and output loops of one qm_layernorm_int row in float64 lanes (AVX2 has no 64-bit integer
   multiply or arithmetic shift), exactly: y_k = floor((x - mean) 2^-k) (integers below 2^33 scaled by a power of
   two), each y_k^2 < 2^32 and their sum over n <= 2^20 values is below 2^52, so every addition is exact in any
   order; |y_k| <= sd (y_k^2 <= var, eps >= 0), so |y_k * (2^50 // sd)| <= 2^50 and floor(p 2^-20) is the shift. */
static void ln_row_f64(const int32_t* xr, int64_t n, int64_t mean, int64_t k, int64_t eps, int32_t* o) {
    const double dm = (double)mean, inv2k = ldexp(1.0, (int)-k);
    const __m256d vm = _mm256_set1_pd(dm), vk = _mm256_set1_pd(inv2k);
    __m256d acc = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d x = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(xr + i)));
        __m256d y = _mm256_floor_pd(_mm256_mul_pd(_mm256_sub_pd(x, vm), vk));
        acc = _mm256_add_pd(acc, _mm256_mul_pd(y, y));
    }
    double t[4];
    _mm256_storeu_pd(t, acc);
    double var = (t[0] + t[1]) + (t[2] + t[3]);
    for (int64_t j = i; j < n; j++) { double y = floor(((double)xr[j] - dm) * inv2k); var += y * y; }
    int64_t v = (int64_t)var + eps;
    int64_t sd = isqrt64(v < 1 ? 1 : v);
    const __m256d vf = _mm256_set1_pd((double)((((int64_t)1) << 50) / sd)), v20 = _mm256_set1_pd(0x1p-20);
    for (i = 0; i + 4 <= n; i += 4) {
        __m256d x = _mm256_cvtepi32_pd(_mm_loadu_si128((const __m128i*)(xr + i)));
        __m256d y = _mm256_floor_pd(_mm256_mul_pd(_mm256_sub_pd(x, vm), vk));
        __m256d q = _mm256_floor_pd(_mm256_mul_pd(_mm256_mul_pd(y, vf), v20));
        _mm_storeu_si128((__m128i*)(o + i), _mm256_cvtpd_epi32(q));  /* integral values: exact */
    }
    const int64_t factor = (((int64_t)1) << 50) / sd;
    for (; i < n; i++) o[i] = (int32_t)((((xr[i] - mean) >> k) * factor) >> 20);
}
#endif

void qm_layernorm_int(const int32_t* x, int64_t rows, int64_t n, const int64_t* eps_k, int32_t* out) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t* xr = x + r * n;
        int64_t sum = 0;
        int32_t mn = n ? xr[0] : 0, mx = mn;
        for (int64_t i = 0; i < n; i++) { sum += xr[i]; mn = xr[i] < mn ? xr[i] : mn; mx = xr[i] > mx ? xr[i] : mx; }
        /* max |x - mean| = max(max - mean, mean - min): floor(sum / n) lies in [min, max] */
        int64_t mean = floordiv(sum, n), amax = (int64_t)mx - mean > mean - (int64_t)mn ? (int64_t)mx - mean : mean - (int64_t)mn;
        int64_t k = bitlen(amax) - 15;
        k = k < 0 ? 0 : (k > 18 ? 18 : k);
#if defined(__AVX2__) && !defined(__AVX512DQ__)
        if (n <= (((int64_t)1) << 20) && eps_k[k] >= 0) {
            ln_row_f64(xr, n, mean, k, eps_k[k], out + r * n);
            continue;
        }
#endif
        int64_t var = 0;
        for (int64_t i = 0; i < n; i++) { int64_t yk = (xr[i] - mean) >> k; var += yk * yk; }
        var += eps_k[k];
        int64_t sd = isqrt64(var < 1 ? 1 : var);
        int64_t factor = (((int64_t)1) << 50) / sd;
        int32_t* o = out + r * n;
        for (int64_t i = 0; i < n; i++) o[i] = (int32_t)((((xr[i] - mean) >> k) * factor) >> 20);
    }
}

/* intops.softmax_int per row: d = q - max, d_w = d >> k, i-exp: z = floor(-d_w / q_ln2) (a float64 quotient of
   integers below 2**53, corrected by one with exact products: vectorisable, unlike an integer division),
   e = ((d_w + z q_ln2 + q_b)^2 + q_c) >> min(z, 40); out = min((e * (2^52 // sum e)) >> (52 - p), 2^p - 1).
   ebuf: n int64. */
static void softmax_int_f64(const int32_t* q, int64_t rows, int64_t n, int64_t k, int64_t q_ln2, int64_t q_b,
                            int64_t q_c, int64_t p, int32_t* out, int32_t* ebuf);

void qm_softmax_int(const int32_t* q, int64_t rows, int64_t n, int64_t k, int64_t q_ln2, int64_t q_b, int64_t q_c,
                    int64_t p, int32_t* out, int64_t* ebuf) {
#if !defined(__AVX512DQ__)
    int64_t a_lo = q_b - q_ln2 + 1, amax = q_b > -a_lo ? q_b : -a_lo;  /* |a| <= amax: a in (q_b - q_ln2, q_b] */
    if (k >= 0 && k < 64 && q_ln2 >= 1 && q_ln2 < (((int64_t)1) << 24) && q_c >= 0 && amax < (((int64_t)1) << 16)
        && amax * amax + q_c < (((int64_t)1) << 31) && p >= 0 && p <= 30) {
        softmax_int_f64(q, rows, n, k, q_ln2, q_b, q_c, p, out, (int32_t*)ebuf);
        return;
    }
#endif
    const double dl = (double)q_ln2;
    const int64_t lim = (((int64_t)1) << p) - 1;
    for (int64_t r = 0; r < rows; r++) {
        const int32_t* qr = q + r * n;
        int32_t* o = out + r * n;
        int64_t mx = qr[0], total = 0;
        for (int64_t i = 1; i < n; i++) mx = qr[i] > mx ? qr[i] : mx;
        for (int64_t i = 0; i < n; i++) {
            int64_t dw = ((int64_t)qr[i] - mx) >> k;
            int64_t u = -dw;  /* 0 <= u < 2**33 */
            int64_t z = (int64_t)((double)u / dl);
            z -= (z * q_ln2 > u);
            z += ((z + 1) * q_ln2 <= u);
            int64_t a = dw + z * q_ln2 + q_b;
            int64_t e = (a * a + q_c) >> (z < 40 ? z : 40);
            ebuf[i] = e;
            total += e;
        }
        int64_t factor = (((int64_t)1) << 52) / total;
        for (int64_t i = 0; i < n; i++) {
            int64_t v = (ebuf[i] * factor) >> (52 - p);
            o[i] = (int32_t)(v < lim ? v : lim);
        }
    }
}

/* qm_softmax_int in float64 / int32 lanes (AVX2 has no 64-bit integer multiply or arithmetic shift; AVX-512 DQ
   builds keep the int64 loop, faster there), for
   constants where every exponential fits int32 (checked by the caller: |a| <= amax, a^2 + q_c < 2^31):
   d_w = floor((q - max) 2^-k) in float64 (exact: integers below 2^34 scaled by a power of two); u = -d_w
   is capped at 41 q_ln2 (then z >= 41 either way and e = poly >> 40 = 0 = poly >> 31, poly < 2^31), so
   z, a and e are int32; e >> min(z, 31) equals e >> min(z, 40) for 0 <= e < 2^31; e * (2^52 // total) <= 2^52
   is exact in float64 and its floor after * 2^-(52 - p) is the shift. The same integers as the loop above. */
static void softmax_int_f64(const int32_t* q, int64_t rows, int64_t n, int64_t k, int64_t q_ln2, int64_t q_b,
                            int64_t q_c, int64_t p, int32_t* out, int32_t* ebuf) {
    const double dl = (double)q_ln2, inv2k = ldexp(1.0, (int)-k), umax = 41.0 * (double)q_ln2;
    const double inv2s = ldexp(1.0, (int)(p - 52)), lim = (double)((((int64_t)1) << p) - 1);
    const int32_t l2 = (int32_t)q_ln2, b32 = (int32_t)q_b, c32 = (int32_t)q_c;
    for (int64_t r = 0; r < rows; r++) {
        const int32_t* qr = q + r * n;
        int32_t* o = out + r * n;
        int32_t mx = qr[0];
        for (int64_t i = 1; i < n; i++) mx = qr[i] > mx ? qr[i] : mx;
        const double dmx = (double)mx;
        for (int64_t i = 0; i < n; i++) {
            double u = -floor(((double)qr[i] - dmx) * inv2k);
            u = u < umax ? u : umax;
            int32_t ui = (int32_t)u;
            int32_t z = (int32_t)(u / dl);
            z -= (z * l2 > ui);
            z += ((z + 1) * l2 <= ui);
            int32_t a = z * l2 - ui + b32;
            ebuf[i] = (a * a + c32) >> (z < 31 ? z : 31);
        }
        int64_t total = 0;
        for (int64_t i = 0; i < n; i++) total += ebuf[i];
        const double factor = (double)((((int64_t)1) << 52) / total);
        for (int64_t i = 0; i < n; i++) {
            double v = floor(((double)ebuf[i] * factor) * inv2s);
            o[i] = (int32_t)(v < lim ? v : lim);
        }
    }
}

/* intops.gelu_int elementwise: x_w = clamp(x >> k, +-sat), d = min(|x_w|, q_bb) - q_bb,
   out = (x_w * (x_w >= 0 ? 2 q_one - d^2 : d^2)) >> t.
   Without 64-bit integer multiplies (AVX2: no vpmullq) the int64 loop does not vectorise; where the constants
   allow (checked first: k < 31, sat, 2 q_one, q_bb^2 below 2^31, sat (2 q_one + q_bb^2) < 2^53, q_bb^2 <= 2 q_one
   <= 2^t so that |out| <= sat) x_w, d, d^2 and the factor are int32 and the product is formed in float64, where
   it is an exact integer below 2^53 and floor(p 2^-t) is the shift. The same integers either way. */
void qm_gelu_int(const int32_t* x, int64_t n, int64_t k, int64_t sat, int64_t q_bb, int64_t q_one, int64_t t,
                 int32_t* out) {
#if !defined(__AVX512DQ__)
    if (k >= 0 && k < 31 && t >= 0 && t < 63 && sat >= 0 && sat < (((int64_t)1) << 31) && q_bb >= 0
        && q_bb < 46341 && q_one >= 0 && 2 * q_one < (((int64_t)1) << 31) && q_bb * q_bb <= 2 * q_one
        && 2 * q_one <= (((int64_t)1) << t) && (double)sat * (double)(2 * q_one + q_bb * q_bb) < 0x1p53) {
        const double inv2t = ldexp(1.0, (int)-t);
        const int32_t s32 = (int32_t)sat, bb = (int32_t)q_bb, one2 = (int32_t)(2 * q_one), k32 = (int32_t)k;
        for (int64_t i = 0; i < n; i++) {
            int32_t xw = x[i] >> k32;
            xw = xw < -s32 ? -s32 : (xw > s32 ? s32 : xw);
            int32_t ax = xw < 0 ? -xw : xw;
            int32_t d = (ax < bb ? ax : bb) - bb;
            int32_t d2 = d * d;
            int32_t f = xw >= 0 ? one2 - d2 : d2;
            out[i] = (int32_t)floor(((double)xw * (double)f) * inv2t);
        }
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        int64_t xw = ((int64_t)x[i]) >> k;
        xw = xw < -sat ? -sat : (xw > sat ? sat : xw);
        int64_t ax = xw < 0 ? -xw : xw;
        int64_t d = (ax < q_bb ? ax : q_bb) - q_bb;
        int64_t d2 = d * d;
        int64_t f = xw >= 0 ? 2 * q_one - d2 : d2;
        out[i] = (int32_t)((xw * f) >> t);
    }
}

/* per-tensor requantization of a row to the int32 range, as float64 integers (fixedpoint.Requantizer
   with qmin, qmax = INT32_MIN, INT32_MAX and float64 output; c, lim, m, s its prepared constants):
   a vectorisable pass, then the exact recomputation of the near-tie elements if there are any */
static void rq_row_i32(const int32_t* a, int64_t n, double c, double lim, int64_t m, int64_t s, double* out) {
    int any = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = (double)a[i] * c;
        double t = rint(v);
        any |= fabs(v - t) >= lim;
        out[i] = t;
    }
    if (any)
        for (int64_t i = 0; i < n; i++) {
            double v = (double)a[i] * c;
            if (fabs(v - rint(v)) >= lim) out[i] = (double)rrs(a[i], m, s);
        }
    for (int64_t i = 0; i < n; i++) out[i] = clampd(out[i], -2147483648.0, 2147483647.0);
}

/* intops fixed-point modulate / gated add over [B, N, C]:
   P = rq(A), p = sat32(rint(fl(P * F[b, c]) * 2^-16)), acc = sat32(p + R), out = clamp(rint(acc * 2^-8), qmin, qmax)
   with R = rq(Bq) (Bq given: the gated add's x) or R = Rbc[b, c] (the modulation's shift). ws: 2 * c doubles. */
/* one row of qm_fix_madd in a single pass (P and R kept in registers); returns 1, with the row to be recomputed,
   when an element of A or Bq is a near tie of its requantization (rq_row_i32's exact recomputation) */
static int fix_madd_row_fused(const int32_t* a, double ca, double la, const double* f, const int32_t* bq, double cb,
                              double lb, const double* rbc, int64_t c, double qmin, double qmax, int32_t* o) {
    int tie = 0;
    if (bq) {
        for (int64_t j = 0; j < c; j++) {
            double va = (double)a[j] * ca, ta = rint(va);
            double vb = (double)bq[j] * cb, tb = rint(vb);
            tie |= (fabs(va - ta) >= la) | (fabs(vb - tb) >= lb);
            ta = clampd(ta, -2147483648.0, 2147483647.0);
            tb = clampd(tb, -2147483648.0, 2147483647.0);
            double pq = clampd(rint((ta * f[j]) * 0x1p-16), -2147483648.0, 2147483647.0);
            double acc = clampd(pq + tb, -2147483648.0, 2147483647.0);
            o[j] = (int32_t)clampd(rint(acc * 0x1p-8), qmin, qmax);
        }
    } else {
        for (int64_t j = 0; j < c; j++) {
            double va = (double)a[j] * ca, ta = rint(va);
            tie |= fabs(va - ta) >= la;
            ta = clampd(ta, -2147483648.0, 2147483647.0);
            double pq = clampd(rint((ta * f[j]) * 0x1p-16), -2147483648.0, 2147483647.0);
            double acc = clampd(pq + rbc[j], -2147483648.0, 2147483647.0);
            o[j] = (int32_t)clampd(rint(acc * 0x1p-8), qmin, qmax);
        }
    }
    return tie;
}

void qm_fix_madd(const int32_t* A, double ca, double la, int64_t ma, int64_t sa, const double* F,
                 const int32_t* Bq, double cb, double lb, int64_t mb, int64_t sb, const double* Rbc,
                 int64_t bsz, int64_t nrow, int64_t c, double qmin, double qmax, int32_t* out, double* ws) {
    double* P = ws; double* R = ws + c;
    for (int64_t b = 0; b < bsz; b++) {
        const double* f = F + b * c;
        for (int64_t r = 0; r < nrow; r++) {
            int64_t off = (b * nrow + r) * c;
            int32_t* o = out + off;
            if ((Bq || Rbc)
                && !fix_madd_row_fused(A + off, ca, la, f, Bq ? Bq + off : NULL, cb, lb, Rbc ? Rbc + b * c : NULL, c,
                                       qmin, qmax, o))
                continue;
            rq_row_i32(A + off, c, ca, la, ma, sa, P);
            const double* rr = Rbc ? Rbc + b * c : R;
            if (Bq) rq_row_i32(Bq + off, c, cb, lb, mb, sb, R);
            for (int64_t j = 0; j < c; j++) {
                double pq = clampd(rint((P[j] * f[j]) * 0x1p-16), -2147483648.0, 2147483647.0);
                double acc = clampd(pq + rr[j], -2147483648.0, 2147483647.0);
                o[j] = (int32_t)clampd(rint(acc * 0x1p-8), qmin, qmax);
            }
        }
    }
}

/* fixedpoint.per_tensor_consts(quantize_multiplier(r), INT32_MIN, INT32_MAX) (intops._rq_consts): (c, lim, m, s).
   Returns 1 for a scale quantize_multiplier refuses (negative, NaN, infinite). */
static void qmult(double r, int64_t* m, int64_t* sh);

static int rq_consts_i32(double r, double* c, double* lim, int64_t* m, int64_t* s) {
    if (!(r >= 0.0 && r <= 1.7976931348623157e308)) return 1;
    int64_t sh;
    qmult(r, m, &sh);
    int64_t si = 31 + sh;
    *c = (si >= 63 || *m == 0) ? 0.0 : (si < 0 ? 0x1p32 : ldexp((double)*m, (int)-si));
    *lim = (si <= 53 - 31 || si >= 63 || *m == 0) ? 2.0 : 0.5 - 0x1p31 * 0x1p-52;
    *s = si;
    return 0;
}

/* qm_fix_madd with its requantization constants derived here from the real factors (scales known only at run
   time: intops.fix_madd_args' _rq_consts, the same values); real_b is ignored without Bq. Returns 1 (nothing
   written) for a factor quantize_multiplier refuses: the caller's Python path then raises its error. */
int qm_fix_madd_r(const int32_t* A, double real_a, const double* F, const int32_t* Bq, double real_b,
                  const double* Rbc, int64_t bsz, int64_t nrow, int64_t c, double qmin, double qmax, int32_t* out,
                  double* ws) {
    double ca, la, cb = 0.0, lb = 2.0;
    int64_t ma, sa, mb = 0, sb = 0;
    if (rq_consts_i32(real_a, &ca, &la, &ma, &sa)) return 1;
    if (Bq && rq_consts_i32(real_b, &cb, &lb, &mb, &sb)) return 1;
    qm_fix_madd(A, ca, la, ma, sa, F, Bq, cb, lb, mb, sb, Rbc, bsz, nrow, c, qmin, qmax, out, ws);
    return 0;
}

/* emulator._param_int: s = fp32(max|t| / qmax) (1 if all zero), q = clamp(rint(fl64(t / s)), +-qmax) as int32,
   t float32 rows [B, C] with row stride bstride. Returns 1 (nothing trustworthy) on a non-finite value. */
int qm_param_quant(const float* t, int64_t bsz, int64_t c, int64_t bstride, int64_t qmax, int32_t* out, double* s_out) {
    float a = 0.0f;
    int bad = 0;
    for (int64_t b = 0; b < bsz; b++)
        for (int64_t j = 0; j < c; j++) {
            float v = fabsf(t[b * bstride + j]);
            bad |= !(v <= 3.4028234663852886e38f);
            a = v > a ? v : a;
        }
    if (bad) return 1;
    double s = a > 0.0f ? (double)(float)((double)a / (double)qmax) : 1.0;
    double qm = (double)qmax;
    for (int64_t b = 0; b < bsz; b++)
        for (int64_t j = 0; j < c; j++) out[b * c + j] = (int32_t)clampd(rint((double)t[b * bstride + j] / s), -qm, qm);
    *s_out = s;
    return 0;
}

/* Dynamic recipes' per-token activation quantization (emulator.linear, dynamic branch): per row of k
   values (float32, or fp16 widened exactly), s = fp32(fl64(max|x|) / qmax) (1 when the row is all zero:
   fixedpoint.symmetric_scale), q = clamp(rint(fl64(x) / fl64(s)), +-qmax) (fixedpoint.quantize).
   Returns 1 on a non-finite value (the caller runs the Python definition, which reports it). */
/* max |x| of m float32 values folded into *a; *rb set when one is not finite (exact in any order: the values
   are non-negative, and a non-finite one is flagged separately) */
static inline void amax_f32(const float* v, int64_t m, float* a_io, int* rb_io) {
    float a = *a_io;
    int rb = 0;
    int64_t j = 0;
#if defined(QMK_AVX512)
    __m512 am = _mm512_setzero_ps(), big = _mm512_set1_ps(3.4028234663852886e38f);
    for (; j + 16 <= m; j += 16) {
        __m512 u = _mm512_abs_ps(_mm512_loadu_ps(v + j));
        rb |= _mm512_cmp_ps_mask(u, big, _CMP_LE_OQ) != 0xFFFF;
        am = _mm512_max_ps(am, u);
    }
    float ar = _mm512_reduce_max_ps(am);
    a = ar > a ? ar : a;
#elif defined(__AVX2__)
    /* the same, 8 at a time (|x| by clearing the sign bit, as fabsf) */
    __m256 am = _mm256_setzero_ps(), big = _mm256_set1_ps(3.4028234663852886e38f);
    __m256 sgn = _mm256_set1_ps(-0.0f);
    for (; j + 8 <= m; j += 8) {
        __m256 u = _mm256_andnot_ps(sgn, _mm256_loadu_ps(v + j));
        rb |= _mm256_movemask_ps(_mm256_cmp_ps(u, big, _CMP_LE_OQ)) != 0xFF;
        am = _mm256_max_ps(am, u);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float ar = _mm_cvtss_f32(h);
    a = ar > a ? ar : a;
#endif
    for (; j < m; j++) {
        float u = fabsf(v[j]);
        rb |= !(u <= 3.4028234663852886e38f);
        a = u > a ? u : a;
    }
    *a_io = a;
    *rb_io |= rb;
}

/* The codes clamp(rint(fl64(x / s)), +-qm) of m float32 values at a float32 scale s > 0, into o8 (int8) and, when
   of is not NULL, the same codes as float32 values; rcp = 1.0f / s.
   Why fl64(x / s) has the exact quotient's rint: x and s are float32, so a quotient near a half-integer h but
   not on it lies at least 2^-26 from it (x - h s is then a non-zero multiple of ulp(s) / 4), far more than
   float64's rounding error for |x / s| <= 2^20; the float64 quotient therefore never rounds onto (or across)
   a half-integer, and its rint is the exact quotient's.
   AVX2 + FMA (s in [2^-90, 2^90], qm <= 2^12): the same integers without a division: q = x * (1/s) is within
   2^-11 of the quotient (relative error below 2^-23), so n = rint(q) is the result unless q lies within 2^-10
   of a half-integer. For a vector with such a lane, the exact sign of x - (n +- 0.5) s, one fused
   multiply-add each (rounding keeps the sign, and the scale range keeps the value out of the subnormals), says
   whether the quotient lies past the half-integer next to n (then n +- 1) or on it (then the even neighbour,
   as rint). Elsewhere float64 divisions as the definition. */
static inline void dq_codes(const float* v, int64_t m, float s, float rcp, double qm, int8_t* o8, float* of) {
    int64_t j = 0;
    double sd = (double)s;
#if defined(__AVX2__) && defined(__FMA__)
    if (s >= 0x1p-90f && s <= 0x1p90f && qm <= 0x1p12) {
        const __m256 vs = _mm256_set1_ps(s), vr = _mm256_set1_ps(rcp);
        const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
        const __m256 hi = _mm256_set1_ps((float)qm), lo = _mm256_set1_ps((float)-qm);
        const __m256 sgn = _mm256_set1_ps(-0.0f), near = _mm256_set1_ps(0.5f - 0x1p-10f);
        for (; j + 8 <= m; j += 8) {
            __m256 x = _mm256_loadu_ps(v + j), q = _mm256_mul_ps(x, vr);
            __m256 n = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), r = n;
            /* |q - n| <= 1/2 - 2^-10 puts the quotient within 1/2 - 2^-11 of n (qm <= 2^12): n is its rint */
            if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sgn, _mm256_sub_ps(q, n)), near, _CMP_GT_OQ))) {
                __m256 hu = _mm256_add_ps(n, half), hd = _mm256_sub_ps(n, half);
                __m256 up = _mm256_fnmadd_ps(hu, vs, x), dn = _mm256_fnmadd_ps(hd, vs, x);  /* x - hu s, x - hd s */
                r = _mm256_blendv_ps(n, _mm256_add_ps(n, one), _mm256_cmp_ps(up, zero, _CMP_GT_OQ));
                r = _mm256_blendv_ps(r, _mm256_round_ps(hu, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                     _mm256_cmp_ps(up, zero, _CMP_EQ_OQ));
                r = _mm256_blendv_ps(r, _mm256_sub_ps(n, one), _mm256_cmp_ps(dn, zero, _CMP_LT_OQ));
                r = _mm256_blendv_ps(r, _mm256_round_ps(hd, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                     _mm256_cmp_ps(dn, zero, _CMP_EQ_OQ));
            }
            __m256i w = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
            if (of) _mm256_storeu_ps(of + j, _mm256_cvtepi32_ps(w));  /* through int32: +0.0 for a zero code */
            __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
            _mm_storel_epi64((__m128i*)(o8 + j), _mm_packs_epi16(p, p));
        }
    }
#endif
    int64_t j1 = j;
#if defined(QMK_AVX512)
    /* the float64 steps, 8 at a time: quotient, round half to even, clamp, narrow */
    __m512d vs8 = _mm512_set1_pd(sd), lo8 = _mm512_set1_pd(-qm), hi8 = _mm512_set1_pd(qm);
    for (; j + 8 <= m; j += 8) {
        __m512d d = _mm512_div_pd(_mm512_cvtps_pd(_mm256_loadu_ps(v + j)), vs8);
        d = _mm512_roundscale_pd(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        d = _mm512_min_pd(_mm512_max_pd(d, lo8), hi8);
        _mm_storel_epi64((__m128i*)(o8 + j), _mm256_cvtepi32_epi8(_mm512_cvtpd_epi32(d)));
    }
#elif defined(__AVX2__)
    /* the same, 4 at a time; the clamped integers narrow exactly (saturating packs) */
    __m256d vs4 = _mm256_set1_pd(sd), lo4 = _mm256_set1_pd(-qm), hi4 = _mm256_set1_pd(qm);
    for (; j + 4 <= m; j += 4) {
        __m256d d = _mm256_div_pd(_mm256_cvtps_pd(_mm_loadu_ps(v + j)), vs4);
        d = _mm256_round_pd(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        d = _mm256_min_pd(_mm256_max_pd(d, lo4), hi4);
        __m128i w = _mm256_cvtpd_epi32(d);
        w = _mm_packs_epi32(w, w);  /* int32 -> int16 */
        w = _mm_packs_epi16(w, w);  /* int16 -> int8: the 4 codes in the low 4 bytes */
        int32_t four = _mm_cvtsi128_si32(w);
        memcpy(o8 + j, &four, 4);
    }
#endif
    for (; j < m; j++) o8[j] = (int8_t)clampd(rint((double)v[j] / sd), -qm, qm);
    if (of)
        for (int64_t i = j1; i < m; i++) of[i] = (float)o8[i];
}

/* The scales fp32(fl64(a / qm)) (1 for a = 0) of n row maxima a >= 0, in place, and their float32 reciprocals
   rc: qm_dyn_quant's per-row steps, 4 rows per float64 division where AVX2 is available. */
static void dq_scales(float* as, float* rc, int64_t n, double qm) {
    int64_t i = 0;
#if defined(__AVX2__)
    const __m256d q4 = _mm256_set1_pd(qm);
    const __m128 one = _mm_set1_ps(1.0f), zero = _mm_setzero_ps();
    for (; i + 4 <= n; i += 4) {
        __m128 a = _mm_loadu_ps(as + i);
        __m128 s = _mm256_cvtpd_ps(_mm256_div_pd(_mm256_cvtps_pd(a), q4));
        s = _mm_blendv_ps(one, s, _mm_cmpgt_ps(a, zero));
        _mm_storeu_ps(as + i, s);
        _mm_storeu_ps(rc + i, _mm_div_ps(one, s));
    }
#endif
    for (; i < n; i++) {
        float s = as[i] > 0.0f ? (float)((double)as[i] / qm) : 1.0f;
        as[i] = s;
        rc[i] = 1.0f / s;
    }
}

int qm_dyn_quant(const void* x, int in_kind, int64_t rows, int64_t k, int64_t qmax, int8_t* out, float* s_out) {
    int64_t nch = (rows + 15) / 16;  /* chunks of 16 rows: their maxima, their scales (dq_scales), their codes */
    int par = nch > 1 && rows * k >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t c = 0; c < nch; c++) {
        float buf[BLK], am[16], rc[16];
        int bad[16];
        int64_t r0 = c * 16, cn = rows - r0 < 16 ? rows - r0 : 16;
        for (int64_t i = 0; i < cn; i++) {  /* pass 1: max |x| */
            int64_t r = r0 + i;
            am[i] = 0.0f;
            bad[i] = 0;
            for (int64_t j0 = 0; j0 < k; j0 += BLK) {
                int64_t m = k - j0 < BLK ? k - j0 : BLK;
                const float* v = (const float*)x + r * k + j0;
                if (in_kind == 1) { h2f((const f16*)x + r * k + j0, buf, m); v = buf; }
                amax_f32(v, m, &am[i], &bad[i]);
            }
        }
        dq_scales(am, rc, cn, (double)qmax);
        for (int64_t i = 0; i < cn; i++) {  /* pass 2: the codes */
            int64_t r = r0 + i;
            s_out[r] = bad[i] ? -1.0f : am[i];  /* a non-finite row marked; reported after the loop */
            if (bad[i]) continue;
            for (int64_t j0 = 0; j0 < k; j0 += BLK) {
                int64_t m = k - j0 < BLK ? k - j0 : BLK;
                const float* v = (const float*)x + r * k + j0;
                if (in_kind == 1) { h2f((const f16*)x + r * k + j0, buf, m); v = buf; }
                dq_codes(v, m, am[i], rc[i], (double)qmax, out + r * k + j0, NULL);
            }
        }
    })
    for (int64_t r = 0; r < rows; r++)
        if (s_out[r] < 0.0f) return 1;
    return 0;
}

/* The dynamic integer products' operand codes (emulator.matmul, dynamic branch) of a strided [D0, D1, R, K] view
   (float32, or fp16: in_kind 0 / 1; strides in elements): qm_dyn_quant's per-row scales and int8 codes of its
   rows (q8, contiguous), and the codes as float32 (qf), the values the exact float product reads. Rows of at
   most BLK values go in chunks, without a copy where they are contiguous float32 (gathered into a stack buffer
   otherwise); xbuf (x's type, contiguous) receives the rows only for longer rows or on a non-finite value (the
   caller's report reads it). Returns 1 on a non-finite value, as qm_dyn_quant. */
int qm_dyn_rows(const void* x, int in_kind, int64_t d0, int64_t d1, int64_t rows, int64_t k, int64_t s0, int64_t s1,
                int64_t sr, int64_t sk, int64_t qmax, void* xbuf, int8_t* q8, float* qf, float* s_out) {
    int64_t nr = d0 * d1 * rows;
    if (k <= BLK) {  /* chunks of rows: their maxima, then their scales 4 at a time, then their codes */
        float cb[4 * BLK], am[64], rc[64];
        f16 hb[BLK];
        int64_t per = 4 * BLK / k < 64 ? 4 * BLK / k : 64;
        for (int64_t c0 = 0; c0 < nr; c0 += per) {
            int64_t cn = nr - c0 < per ? nr - c0 : per;
            const float* rp[64];
            int rb = 0;
            for (int64_t i = 0; i < cn; i++) {
                int64_t row = c0 + i, r = row % rows, i1 = (row / rows) % d1, i0 = row / (rows * d1);
                int64_t src = i0 * s0 + i1 * s1 + r * sr;
                float* b = cb + i * k;
                rp[i] = b;
                if (in_kind == 1) {
                    const f16* a = (const f16*)x + src;
                    if (sk != 1) {
                        for (int64_t j = 0; j < k; j++) hb[j] = a[j * sk];
                        a = hb;
                    }
                    h2f(a, b, k);
                } else if (sk == 1) {
                    rp[i] = (const float*)x + src;
                } else {
                    const float* a = (const float*)x + src;
                    for (int64_t j = 0; j < k; j++) b[j] = a[j * sk];
                }
                am[i] = 0.0f;
                amax_f32(rp[i], k, &am[i], &rb);
            }
            if (rb) break;
            dq_scales(am, rc, cn, (double)qmax);
            for (int64_t i = 0; i < cn; i++) {
                s_out[c0 + i] = am[i];
                dq_codes(rp[i], k, am[i], rc[i], (double)qmax, q8 + (c0 + i) * k, qf + (c0 + i) * k);
            }
            if (c0 + cn == nr) return 0;
        }
    }
    for (int64_t i0 = 0; i0 < d0; i0++)  /* long rows, or a non-finite value: the contiguous copy first */
        for (int64_t i1 = 0; i1 < d1; i1++)
            for (int64_t r = 0; r < rows; r++) {
                int64_t src = i0 * s0 + i1 * s1 + r * sr, dst = ((i0 * d1 + i1) * rows + r) * k;
                if (in_kind == 1) {
                    const f16* a = (const f16*)x + src;
                    f16* b = (f16*)xbuf + dst;
                    if (sk == 1) memcpy(b, a, (size_t)k * 2);
                    else for (int64_t j = 0; j < k; j++) b[j] = a[j * sk];
                } else {
                    const float* a = (const float*)x + src;
                    float* b = (float*)xbuf + dst;
                    if (sk == 1) memcpy(b, a, (size_t)k * 4);
                    else for (int64_t j = 0; j < k; j++) b[j] = a[j * sk];
                }
            }
    if (qm_dyn_quant(xbuf, in_kind, nr, k, qmax, q8, s_out)) return 1;
    for (int64_t i = 0; i < nr * k; i++) qf[i] = (float)q8[i];
    return 0;
}

/* y [batch, m, n] float32 in place: (y * sa[b, i]) * sb[b, j], two float32 products in this order (the two
   broadcast multiplies of the dynamic products' rescale). */
void qm_scale_rows_cols(float* y, int64_t batch, int64_t m, int64_t n, const float* sa, const float* sb) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < m; i++) {
            float* yr = y + (b * m + i) * n;
            const float a = sa[b * m + i];
            const float* c = sb + b * n;
            for (int64_t j = 0; j < n; j++) yr[j] = (yr[j] * a) * c[j];
        }
}

/* The dynamic integer products' exact float product and rescale in one pass (qm_dyn_rows' float codes, then
   qm_scale_rows_cols): y[b, i, j] = ((sum_t A[b, i, t] B[b, j, t]) * sa[b, i]) * sb[b, j] for A [batch, m, k],
   B [batch, n, k] float32 integer codes with k * max|A| * max|B| <= 2^24. Every product and partial sum is then
   an integer below 2^24 in magnitude, exact in float32 in any order (a fused multiply-add included), so the
   sum is torch.matmul's; the two float32 products follow in qm_scale_rows_cols' order. B[b] is transposed into
   a stack buffer so that each output row is a sum of k scaled rows (vectors across j). Returns 1 (nothing
   written) when k * n exceeds that buffer (8192 values); the caller then keeps torch.matmul. */
int qm_dyn_product(const float* A, const float* B, int64_t batch, int64_t m, int64_t k, int64_t n, const float* sa,
                   const float* sb, float* y) {
    if (k * n > 8192) return 1;
    float bt[8192];
    for (int64_t b = 0; b < batch; b++) {
        const float* bb = B + b * n * k;
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < k; t++) bt[t * n + j] = bb[j * k + t];
        const float* c = sb + b * n;
        for (int64_t i = 0; i < m; i++) {
            const float* ar = A + (b * m + i) * k;
            float* yr = y + (b * m + i) * n;
            const float a = sa[b * m + i];
            int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
            for (; j + 16 <= n; j += 16) {
                __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
                for (int64_t t = 0; t < k; t++) {
                    __m256 av = _mm256_set1_ps(ar[t]);
                    s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(bt + t * n + j), s0);
                    s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(bt + t * n + j + 8), s1);
                }
                __m256 va = _mm256_set1_ps(a);
                _mm256_storeu_ps(yr + j, _mm256_mul_ps(_mm256_mul_ps(s0, va), _mm256_loadu_ps(c + j)));
                _mm256_storeu_ps(yr + j + 8, _mm256_mul_ps(_mm256_mul_ps(s1, va), _mm256_loadu_ps(c + j + 8)));
            }
            for (; j + 8 <= n; j += 8) {
                __m256 s0 = _mm256_setzero_ps();
                for (int64_t t = 0; t < k; t++)
                    s0 = _mm256_fmadd_ps(_mm256_set1_ps(ar[t]), _mm256_loadu_ps(bt + t * n + j), s0);
                _mm256_storeu_ps(yr + j, _mm256_mul_ps(_mm256_mul_ps(s0, _mm256_set1_ps(a)), _mm256_loadu_ps(c + j)));
            }
#endif
            for (; j < n; j++) {
                float acc = 0.0f;
                for (int64_t t = 0; t < k; t++) acc += ar[t] * bt[t * n + j];
                yr[j] = (acc * a) * c[j];
            }
        }
    }
    return 0;
}

/* Dynamic recipes' rescale of the int32 sums (the dyn_rescale op): y = (fp32(acc) * s_row) * w_scale + bias
   in float32 (no fused multiply-add), then (out_f16) the emulator's saturating fp16 conversion (clamp to
   +-65504, round to nearest even), else float32. acc [rows, n]; s_row [rows]; w_scale, bias [n]. */
void qm_dyn_rescale(const int32_t* acc, int64_t rows, int64_t n, const float* s_row, const float* w_scale,
                    const float* bias, void* out, int out_f16) {
    int par = rows > 1 && rows * n >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t r = 0; r < rows; r++) {
        float buf[BLK];
        float sr = s_row[r];
        for (int64_t j0 = 0; j0 < n; j0 += BLK) {
            int64_t m = n - j0 < BLK ? n - j0 : BLK;
            const int32_t* a = acc + r * n + j0;
            if (!out_f16) {  /* float32 (int mode keeps the value) */
                float* o = (float*)out + r * n + j0;
                for (int64_t j = 0; j < m; j++) o[j] = ((float)a[j] * sr) * w_scale[j0 + j] + bias[j0 + j];
                continue;
            }
            for (int64_t j = 0; j < m; j++)
                buf[j] = clampf(((float)a[j] * sr) * w_scale[j0 + j] + bias[j0 + j], -65504.0f, 65504.0f);
            f2h(buf, (f16*)out + r * n + j0, m);
        }
    })
}

/* Dynamic asymmetric recipes' per-token quantization (fixedpoint.dynamic_zero_points) of x [rows, k] (float32,
   or fp16 widened: in_kind 0 / 1): per row lo = min(x, 0), hi = max(x, 0), scale s = fp32((hi - lo) /
   (2^b - 1)) in float64 (1 for an all-zero row), zero point z = clamp(qmin - rint(lo / s)), codes
   clamp(rint(x / s) + z) over the full signed range, every step in float64 as the torch definition.
   Returns 1 (nothing to trust) when a row holds a non-finite value or its scale is not a positive
   float32; the caller then runs the torch definition. Plain loops: gcc vectorises the float64 divisions,
   rint (half to even) and clamps for the target (-fno-math-errno), the same IEEE operations. */
int qm_dyn_quant_zp(const void* x, int in_kind, int64_t rows, int64_t k, int64_t bits, int8_t* out, float* s_out,
                    int32_t* z_out) {
    double qmin = -(double)((int64_t)1 << (bits - 1)), qmax = (double)(((int64_t)1 << (bits - 1)) - 1);
    double levels = (double)(((int64_t)1 << bits) - 1);
    int par = rows > 1 && rows * k >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t r = 0; r < rows; r++) {
        float buf[BLK];
        float lo = 0.0f, hi = 0.0f;
        int bad = 0;
        for (int64_t j0 = 0; j0 < k; j0 += BLK) {  /* pass 1: the row's range (min / max: exact in any order) */
            int64_t m = k - j0 < BLK ? k - j0 : BLK;
            const float* v = (const float*)x + r * k + j0;
            if (in_kind == 1) { h2f((const f16*)x + r * k + j0, buf, m); v = buf; }
            int64_t j = 0;
#if defined(__AVX2__)
            /* the same min / max, 8 at a time (min_ps(u, lo) is u < lo ? u : lo, as below, NaN included) */
            if (m >= 8) {
                __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), nf = _mm256_setzero_ps();
                const __m256 sgn = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.4028234663852886e38f);
                for (; j + 8 <= m; j += 8) {
                    __m256 u = _mm256_loadu_ps(v + j);
                    nf = _mm256_or_ps(nf, _mm256_cmp_ps(_mm256_andnot_ps(sgn, u), big, _CMP_NLE_UQ));
                    vlo = _mm256_min_ps(u, vlo);
                    vhi = _mm256_max_ps(u, vhi);
                }
                float l8[8], h8[8];
                _mm256_storeu_ps(l8, vlo);
                _mm256_storeu_ps(h8, vhi);
                for (int i = 0; i < 8; i++) { lo = l8[i] < lo ? l8[i] : lo; hi = h8[i] > hi ? h8[i] : hi; }
                bad |= _mm256_movemask_ps(nf) != 0;
            }
#endif
            for (; j < m; j++) {
                float u = v[j];
                bad |= !(fabsf(u) <= 3.4028234663852886e38f);
                lo = u < lo ? u : lo;
                hi = u > hi ? u : hi;
            }
        }
        double span = (double)hi - (double)lo;
        float s = span > 0.0 ? (float)(span / levels) : 1.0f;
        if (bad || !(s > 0.0f) || !(fabsf(s) <= 3.4028234663852886e38f)) { s_out[r] = -1.0f; continue; }
        double sd = (double)s;
        double z = clampd(qmin - rint((double)lo / sd), qmin, qmax);
        s_out[r] = s;
        z_out[r] = (int32_t)z;
        for (int64_t j0 = 0; j0 < k; j0 += BLK) {  /* pass 2: the codes */
            int64_t m = k - j0 < BLK ? k - j0 : BLK;
            const float* v = (const float*)x + r * k + j0;
            if (in_kind == 1) { h2f((const f16*)x + r * k + j0, buf, m); v = buf; }
            int8_t* o = out + r * k + j0;
            for (int64_t j = 0; j < m; j++) o[j] = (int8_t)(int32_t)clampd(rint((double)v[j] / sd) + z, qmin, qmax);
        }
    })
    for (int64_t r = 0; r < rows; r++)
        if (s_out[r] < 0.0f) return 1;
    return 0;
}

/* qm_dyn_rescale of the zero-point-corrected sums acc - z_row * colsum (int32, as the torch definition:
   exact within the emulator's K bound) for dynamic asymmetric recipes. */
void qm_dyn_rescale_zp(const int32_t* acc, int64_t rows, int64_t n, const float* s_row, const int32_t* z_row,
                       const int32_t* colsum, const float* w_scale, const float* bias, void* out, int out_f16) {
    int par = rows > 1 && rows * n >= PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t r = 0; r < rows; r++) {
        float buf[BLK];
        float sr = s_row[r];
        int64_t z = z_row[r];
        for (int64_t j0 = 0; j0 < n; j0 += BLK) {
            int64_t m = n - j0 < BLK ? n - j0 : BLK;
            const int32_t* a = acc + r * n + j0;
            const int32_t* cs = colsum + j0;
            float* o = out_f16 ? buf : (float*)out + r * n + j0;
            for (int64_t j = 0; j < m; j++) {
                int32_t c = (int32_t)((int64_t)a[j] - z * (int64_t)cs[j]);
                float y = ((float)c * sr) * w_scale[j0 + j] + bias[j0 + j];
                o[j] = out_f16 ? clampf(y, -65504.0f, 65504.0f) : y;
            }
            if (out_f16) f2h(buf, (f16*)out + r * n + j0, m);
        }
    })
}

/* fixedpoint.quantize_multiplier of a finite r >= 0: r ~ m * 2**-(31 + sh), m in [2**30, 2**31), half to even */
static void qmult(double r, int64_t* m, int64_t* sh) {
    if (r == 0.0) { *m = 0; *sh = 0; return; }
    int e;
    double f = frexp(r, &e);
    int64_t mi = (int64_t)rint(ldexp(f, 31));  /* exact product; rint: half to even */
    if (mi == ((int64_t)1 << 31)) { mi >>= 1; e += 1; }
    *m = mi;
    *sh = -e;
}

/* fixedpoint.requantize(q, m, sh, INT32_MIN, INT32_MAX) of one int32-range value, exactly (int64):
   round_half_even(q * m / 2**(31 + sh)), saturated; as the Requantizer's cases (s >= 63: 0; s < 0: saturate) */
static double rq_exact(int64_t q, int64_t m, int64_t sh) {
    int64_t s = 31 + sh, v;
    if (m == 0 || q == 0 || s >= 63) return 0.0;
    if (s < 0) return q > 0 ? 2147483647.0 : -2147483648.0;
    v = s == 0 ? q * m : rrs(q, m, s);
    return clampd((double)v, -2147483648.0, 2147483647.0);
}

/* Quantized attention's operands from a GEMM's integer output: q [B, N, P, H, D] int8 / int16 codes
   (in_kind 0 / 1), part p requantized to the product's input scale, clamp(round_half_even(q * m_p /
   2**(31 + s_p)), +-qmax) (fixedpoint.requantize, per tensor, exactly in int64), split as
   qm_split_heads does ([B, H, N, D], or [B, H, D, N] where bit p of tmask is set), as float32 values
   (the small integers the exact float product reads). */
void qm_split_heads_q8(const void* q, int in_kind, int64_t B, int64_t N, int64_t P, int64_t H, int64_t D,
                       const int64_t* mult, const int64_t* shift, int64_t qmax, float* out, int64_t tmask) {
    int64_t C = H * D, per = B * H * N * D;
    double qm = (double)qmax;
    int par = B * N > 1 && B * N * P * C >= PAR_MIN && NTHR > 1;
    if (C > BLK) { par = 0; }
    PAR_LOOP(par, for (int64_t bt = 0; bt < B * N; bt++) {
        float buf[BLK];
        int64_t b = bt / N, t = bt % N;
        for (int64_t p = 0; p < P; p++) {
            int64_t base = (bt * P + p) * C, m = mult[p], sh = 31 + shift[p];
            float* o = out + p * per;
            int tr = (tmask >> p) & 1;
            if (C <= BLK && m > 0 && sh >= 1 && sh <= 62) {  /* rrs's exact int64 rounding, vectorisable */
                int64_t half = ((int64_t)1 << (sh - 1)) - 1, lim = qmax;
                if (in_kind == 0) {
                    const int8_t* src = (const int8_t*)q + base;
                    for (int64_t i = 0; i < C; i++) {
                        int64_t pr = (int64_t)src[i] * m, r = (pr + ((pr >> sh) & 1) + half) >> sh;
                        r = r < -lim ? -lim : r; r = r > lim ? lim : r;
                        buf[i] = (float)r;
                    }
                } else {
                    const int16_t* src = (const int16_t*)q + base;
                    for (int64_t i = 0; i < C; i++) {
                        int64_t pr = (int64_t)src[i] * m, r = (pr + ((pr >> sh) & 1) + half) >> sh;
                        r = r < -lim ? -lim : r; r = r > lim ? lim : r;
                        buf[i] = (float)r;
                    }
                }
                for (int64_t h = 0; h < H; h++) {
                    if (tr) for (int64_t d = 0; d < D; d++) o[((b * H + h) * D + d) * N + t] = buf[h * D + d];
                    else {
                        float* oo = o + ((b * H + h) * N + t) * D;
                        for (int64_t d = 0; d < D; d++) oo[d] = buf[h * D + d];
                    }
                }
                continue;
            }
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++) {
                    int64_t v = in_kind == 0 ? ((const int8_t*)q)[base + h * D + d] : ((const int16_t*)q)[base + h * D + d];
                    float r = (float)clampd(rq_exact(v, m, shift[p]), -qm, qm);
                    if (tr) o[((b * H + h) * D + d) * N + t] = r;
                    else o[((b * H + h) * N + t) * D + d] = r;
                }
        }
    })
}

/* The per-step operands of one int-mode modulation or gated add (emulator: _fold_mod, _param_int,
   intops.modulate_factors / gate_q16), from float32 parameters [B, 1, C] with batch stride pstride:
   with inv (a consumer's 1/s): scale' = (1 + scale) * inv - 1, shift' = shift * inv (float32 ops), else as is;
   each quantized to 16 bits (qm_param_quant); f = sat32(Q16(scale') + 2**16) and r = shift' at s_out / 2**8,
   or (shift NULL: a gate) f = Q16(gate). f, r float64 [B, C]; fw float [2 B C], qw int32 [2 B C] scratch.
   Returns 1 on a non-finite parameter (the caller runs the Python definition, which reports it). */
int qm_mod_operands(const float* scale, const float* shift, int64_t pstride, const float* inv, int64_t bsz,
                    int64_t c, double s_out, int64_t qmax, double* f, double* r, float* fw, int32_t* qw) {
    int64_t n = bsz * c, m, sh;
    double s_sc, s_sh;
    for (int64_t b = 0; b < bsz; b++)
        for (int64_t j = 0; j < c; j++) {
            float sc = scale[b * pstride + j];
            if (inv) sc = (1.0f + sc) * inv[j] - 1.0f;
            fw[b * c + j] = sc;
            if (shift) {
                float v = shift[b * pstride + j];
                if (inv) v = v * inv[j];
                fw[n + b * c + j] = v;
            }
        }
    if (qm_param_quant(fw, bsz, c, c, qmax, qw, &s_sc)) return 1;
    qmult(s_sc * 65536.0, &m, &sh);
    for (int64_t i = 0; i < n; i++) {
        double q16 = rq_exact(qw[i], m, sh);
        f[i] = shift ? clampd(q16 + 65536.0, -2147483648.0, 2147483647.0) : q16;
    }
    if (!shift) return 0;
    if (qm_param_quant(fw + n, bsz, c, c, qmax, qw + n, &s_sh)) return 1;
    qmult(s_sh / (s_out / 256.0), &m, &sh);
    for (int64_t i = 0; i < n; i++) r[i] = rq_exact(qw[n + i], m, sh);
    return 0;
}

/* ---- exact int8 x int8 -> int32 GEMM for CPUs without fast int8 dot products (gemmpaths "ckernel") ----
   C = A B with A int8 [M, K] (row-major), B int8 [K, N] prepacked by qm_gemm_pack_b. Products are formed as
   int16 pairs: each output accumulates a[m, 2p] b[2p, n] + a[m, 2p+1] b[2p+1, n] (vpmaddwd under AVX2: two
   int16 products summed exactly in int32; |pair| <= 2 * 128 * 128), then int32 adds. Integer arithmetic
   throughout, so any order gives the same sums; the caller proves the sums fit int32 (as for torch._int_mm),
   so no partial sum can wrap either. Blocking: 6 x 16 register tiles, KC values of K per pass so a 16-column
   slice of B (KC * 16 int16) stays in L1 while the rows of an MC block (in L2) stream past it. */
#define GM_NR 16
#define GM_MR 6
#define GM_KC 512
#define GM_MC 96

int64_t qm_gemm_pack_b_size(int64_t k, int64_t n) {
    return ((n + GM_NR - 1) / GM_NR) * GM_NR * ((k + 1) & ~(int64_t)1);
}

/* B [K, N] int8 -> bp: per 16-column panel, per k pair p, the 16 columns as (b[2p, j], b[2p+1, j]) int16 pairs
   (zeros past K and N) */
void qm_gemm_pack_b(const int8_t* b, int64_t k, int64_t n, int16_t* bp) {
    int64_t kp = (k + 1) & ~(int64_t)1, npan = (n + GM_NR - 1) / GM_NR;
    for (int64_t jp = 0; jp < npan; jp++)
        for (int64_t p = 0; p < kp / 2; p++) {
            int16_t* d = bp + (jp * (kp / 2) + p) * 2 * GM_NR;
            for (int64_t c = 0; c < GM_NR; c++) {
                int64_t j = jp * GM_NR + c;
                d[2 * c] = j < n ? b[2 * p * n + j] : 0;
                d[2 * c + 1] = (j < n && 2 * p + 1 < k) ? b[(2 * p + 1) * n + j] : 0;
            }
        }
}

/* one 6 x 16 tile over np k pairs: a rows lda int16 apart (pairs adjacent), b a packed panel slice; the sums
   are stored to o, rows ldo apart */
static void gm_tile(const int16_t* a, int64_t lda, const int16_t* b, int64_t np, int32_t* o, int64_t ldo) {
#if defined(__AVX2__)
    /* twelve named accumulators (an array of them is kept on the stack by gcc) */
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define GM_ROW(r, x0, x1) { int32_t pair; memcpy(&pair, a + (r) * lda + 2 * p, 4); __m256i av = _mm256_set1_epi32(pair); \
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(av, b0)); x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(av, b1)); }
    for (int64_t p = 0; p < np; p++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i*)(b + p * 32));
        __m256i b1 = _mm256_loadu_si256((const __m256i*)(b + p * 32 + 16));
        GM_ROW(0, c00, c01) GM_ROW(1, c10, c11) GM_ROW(2, c20, c21)
        GM_ROW(3, c30, c31) GM_ROW(4, c40, c41) GM_ROW(5, c50, c51)
    }
#undef GM_ROW
#define GM_OUT(r, x0, x1) { __m256i* q = (__m256i*)(o + (r) * ldo); _mm256_storeu_si256(q, x0); _mm256_storeu_si256(q + 1, x1); }
    GM_OUT(0, c00, c01) GM_OUT(1, c10, c11) GM_OUT(2, c20, c21)
    GM_OUT(3, c30, c31) GM_OUT(4, c40, c41) GM_OUT(5, c50, c51)
#undef GM_OUT
#else
    for (int r = 0; r < GM_MR; r++) {
        uint32_t acc[GM_NR] = {0};
        for (int64_t p = 0; p < np; p++) {
            int32_t a0 = a[r * lda + 2 * p], a1 = a[r * lda + 2 * p + 1];
            const int16_t* bb = b + p * 32;
            for (int cc = 0; cc < GM_NR; cc++) acc[cc] += (uint32_t)(a0 * bb[2 * cc] + a1 * bb[2 * cc + 1]);
        }
        for (int cc = 0; cc < GM_NR; cc++) o[r * ldo + cc] = (int32_t)acc[cc];
    }
#endif
}

/* out [M, N] int32 = A B; bp from qm_gemm_pack_b; ap: scratch of qm_gemm_pack_a_size(m, k) int16 */
int64_t qm_gemm_pack_a_size(int64_t m, int64_t k) {
    return ((m + GM_MR - 1) / GM_MR) * GM_MR * ((k + 1) & ~(int64_t)1);
}

void qm_gemm_s8(const int8_t* a, int64_t m, int64_t k, const int16_t* bp, int64_t n, int32_t* out, int16_t* ap) {
    int64_t kp = (k + 1) & ~(int64_t)1, mp = (m + GM_MR - 1) / GM_MR * GM_MR, npan = (n + GM_NR - 1) / GM_NR;
    int par = m * n * k >= 64 * PAR_MIN && NTHR > 1;
    PAR_LOOP(par, for (int64_t r = 0; r < mp; r++) {  /* A as int16 rows of kp values, zero padded */
        int16_t* d = ap + r * kp;
        if (r < m) {
            const int8_t* s = a + r * k;
            for (int64_t i = 0; i < k; i++) d[i] = s[i];
            if (kp > k) d[k] = 0;
        } else memset(d, 0, (size_t)kp * sizeof(int16_t));
    })
    int64_t nmb = (mp + GM_MC - 1) / GM_MC;
    for (int64_t k0 = 0; k0 < kp; k0 += GM_KC) {
        int64_t np = (kp - k0 < GM_KC ? kp - k0 : GM_KC) / 2;
        int first = k0 == 0;
        PAR_LOOP(par, for (int64_t job = 0; job < nmb * npan; job++) {
            int64_t mb = job / npan, jp = job % npan;
            int32_t tile[GM_MR * GM_NR];
            const int16_t* bs = bp + (jp * (kp / 2) + k0 / 2) * 2 * GM_NR;
            int64_t r1 = (mb + 1) * GM_MC < mp ? (mb + 1) * GM_MC : mp;
            int64_t nc = n - jp * GM_NR < GM_NR ? n - jp * GM_NR : GM_NR;
            for (int64_t r0 = mb * GM_MC; r0 < r1; r0 += GM_MR) {
                if (first && r0 + GM_MR <= m && nc == GM_NR) {  /* a whole tile's first pass: straight to out */
                    gm_tile(ap + r0 * kp + k0, kp, bs, np, out + r0 * n + jp * GM_NR, n);
                    continue;
                }
                gm_tile(ap + r0 * kp + k0, kp, bs, np, tile, GM_NR);  /* else its valid part, stored or added */
                for (int64_t r = 0; r < GM_MR && r0 + r < m; r++) {
                    int32_t* o = out + (r0 + r) * n + jp * GM_NR;
                    const int32_t* t = tile + r * GM_NR;
                    if (first) for (int64_t cc = 0; cc < nc; cc++) o[cc] = t[cc];
                    else for (int64_t cc = 0; cc < nc; cc++) o[cc] = (int32_t)((uint32_t)o[cc] + (uint32_t)t[cc]);
                }
            }
        })
    }
}

/* ---- ranges measured on line (dynamic recipes in the integer-only mode) -------------------------------
   Each returns the largest |value| of a tensor the eager emulator builds only to take its abs-max (max is
   exact in any order), computing every value by the same float operations: fixedpoint.dequantize
   (fp32(fl64(q) * s), which equals float32's product for a float32 s and |q| < 2**24), then float32 mul /
   add one at a time (no contraction). -1 when a value is not finite (the caller's torch definition then
   gives the result, NaN included). */
static inline float deq_s(int32_t q, double s) { return (float)((double)q * s); }

/* max |f[i]| and whether a value was not finite, accumulated over calls. gcc does not vectorise a float max
   reduction without -ffast-math's NaN assumptions, so AVX2 builds take 8 lanes by intrinsics (max_ps keeps
   the running max on a NaN, which the not-finite flag reports anyway). max is exact in any order. */
typedef struct { float a; int bad; } amax_acc;

static void am_init(amax_acc* s) { s->a = 0.0f; s->bad = 0; }

static void am_add(amax_acc* s, const float* f, int64_t n) {
    int64_t i = 0;
    float a = s->a;
    int bad = s->bad;
#if defined(__AVX2__)
    if (n >= 8) {
        const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.4028234663852886e38f);
        __m256 m = _mm256_set1_ps(a), nf = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            __m256 u = _mm256_andnot_ps(sign, _mm256_loadu_ps(f + i));
            m = _mm256_max_ps(u, m);
            nf = _mm256_or_ps(nf, _mm256_cmp_ps(u, big, _CMP_NLE_UQ));
        }
        float lane[8];
        _mm256_storeu_ps(lane, m);
        for (int j = 0; j < 8; j++) a = lane[j] > a ? lane[j] : a;
        bad |= _mm256_movemask_ps(nf) != 0;
    }
#endif
    for (; i < n; i++) {
        float u = fabsf(f[i]);
        a = u > a ? u : a;
        bad |= !(u <= 3.4028234663852886e38f);
    }
    s->a = a;
    s->bad = bad;
}

static double am_result(const amax_acc* s) { return s->bad ? -1.0 : (double)s->a; }

/* emulator._static_scale's dynamic_of of a float tensor: max |x|, x float32 or fp16 (widened exactly). */
double qm_absmax(const void* x, int in_kind, int64_t n) {
    amax_acc s;
    am_init(&s);
    if (in_kind != 1) {
        am_add(&s, (const float*)x, n);
        return am_result(&s);
    }
    const f16* h = (const f16*)x;
    float buf[BLK];
    for (int64_t i = 0; i < n; i += BLK) {
        int64_t m = n - i < BLK ? n - i : BLK;
        h2f(h + i, buf, m);
        am_add(&s, buf, m);
    }
    return am_result(&s);
}

/* datapath.modulated: max |fp32(x * sx) * (1 + scale) + shift|; x [B, N, C] int32, scale / shift float32
   [B, 1, C] rows with row stride pstride. Values of a row chunk are formed in a buffer, then reduced. */
double qm_mod_absmax(const int32_t* x, double sx, const float* scale, const float* shift, int64_t pstride,
                     int64_t bsz, int64_t n, int64_t c) {
    amax_acc s;
    am_init(&s);
    float buf[BLK];
    for (int64_t b = 0; b < bsz; b++) {
        const float* sc = scale + b * pstride;
        const float* sh = shift + b * pstride;
        for (int64_t r = 0; r < n; r++) {
            const int32_t* xr = x + (b * n + r) * c;
            for (int64_t j0 = 0; j0 < c; j0 += BLK) {
                int64_t m = c - j0 < BLK ? c - j0 : BLK;
                for (int64_t j = 0; j < m; j++) {
                    float f = 1.0f + sc[j0 + j];
                    float p = deq_s(xr[j0 + j], sx) * f;
                    buf[j] = p + sh[j0 + j];
                }
                am_add(&s, buf, m);
            }
        }
    }
    return am_result(&s);
}

/* datapath.gated_sum: max |fp32(x * sx) + fp32(g * sg) * fp32(y * sy)|; x, y [B, N, C] int32, g [B, 1, C]
   int32 (NULL: the constant gate 1 at scale 1). */
double qm_gated_absmax(const int32_t* x, double sx, const int32_t* g, double sg, const int32_t* y, double sy,
                       int64_t bsz, int64_t n, int64_t c) {
    amax_acc s;
    am_init(&s);
    float buf[BLK];
    for (int64_t b = 0; b < bsz; b++)
        for (int64_t r = 0; r < n; r++) {
            int64_t o = (b * n + r) * c;
            for (int64_t j0 = 0; j0 < c; j0 += BLK) {
                int64_t m = c - j0 < BLK ? c - j0 : BLK;
                if (g)
                    for (int64_t j = 0; j < m; j++)
                        buf[j] = deq_s(x[o + j0 + j], sx) + deq_s(g[b * c + j0 + j], sg) * deq_s(y[o + j0 + j], sy);
                else
                    for (int64_t j = 0; j < m; j++) buf[j] = deq_s(x[o + j0 + j], sx) + 1.0f * deq_s(y[o + j0 + j], sy);
                am_add(&s, buf, m);
            }
        }
    return am_result(&s);
}

/* the residual's output range with the gate quantized here (emulator._param_int of gate float32 [B, 1, C], row
   stride gstride, to +-qmax: qm_param_quant, codes into gq) instead of in a separate call; -2 when the gate is
   not finite (the caller's Python definition then reports it), else as qm_gated_absmax. */
double qm_gated_absmax_p(const int32_t* x, double sx, const float* gate, int64_t gstride, int64_t qmax, int32_t* gq,
                         const int32_t* y, double sy, int64_t bsz, int64_t n, int64_t c) {
    double sg;
    if (qm_param_quant(gate, bsz, c, gstride, qmax, gq, &sg)) return -2.0;
    return qm_gated_absmax(x, sx, gq, sg, y, sy, bsz, n, c);
}

/* emulator._int of a float tensor without a calibrated range (program.to_int_dyn) in one call: a = qm_absmax(x),
   s = fp32(a * headroom / qmax) (1 when a is 0: datapath.range_scale), then qm_act_quant at fp32(1 / s)
   (fixedpoint.act_reciprocal) to int32 codes; *s_out = s. Returns 1 (nothing written) when a value is not finite
   or s or 1 / s is not a finite float32: the caller's Python definition then gives the result or the error. */
int qm_dyn_act_quant(const void* x, int in_kind, int64_t n, double headroom, int64_t qmax, int32_t* out,
                     double* s_out) {
    double a = qm_absmax(x, in_kind, n);
    if (a < 0) return 1;
    double am = a * headroom;
    double v = am > 0 ? am / (double)qmax : 1.0;
    float s = (float)v;
    if (!(s <= 3.4028234663852886e38f) || !(s > 0.0f)) return 1;
    double q = 1.0 / (double)s;
    if (!(q < 3.4028234663852886e38)) return 1;
    qm_act_quant(x, in_kind, n, (float)q, (float)(double)qmax, out, 2 /* int32: ckernels.I32 */, NULL, 0);
    *s_out = (double)s;
    return 0;
}

/* A dynamic-recipe linear layer on the C GEMM path as one call (the program's dyn_linear / dyn_linear_zp when the
   GEMM path is the C kernel): qm_dyn_quant (zp: qm_dyn_quant_zp) of x [rows, k], qm_gemm_s8 with the packed
   weights, then qm_dyn_rescale (zp: qm_dyn_rescale_zp) into out; the same calls, one after the other. Returns 1
   (after writing partial results) on a non-finite input, as the quantizer; the caller then reports it. */
int qm_dyn_linear_s8(const void* x, int in_kind, int64_t rows, int64_t k, int64_t qmax, int8_t* q, float* s_row,
                     const int16_t* bp, int64_t n, int32_t* acc, int16_t* ap, const float* w_scale, const float* bias,
                     void* out, int out_f16) {
    if (qm_dyn_quant(x, in_kind, rows, k, qmax, q, s_row)) return 1;
    qm_gemm_s8(q, rows, k, bp, n, acc, ap);
    qm_dyn_rescale(acc, rows, n, s_row, w_scale, bias, out, out_f16);
    return 0;
}

int qm_dyn_linear_zp_s8(const void* x, int in_kind, int64_t rows, int64_t k, int64_t bits, int8_t* q, float* s_row,
                        int32_t* z_row, const int16_t* bp, int64_t n, int32_t* acc, int16_t* ap, const int32_t* colsum,
                        const float* w_scale, const float* bias, void* out, int out_f16) {
    if (qm_dyn_quant_zp(x, in_kind, rows, k, bits, q, s_row, z_row)) return 1;
    qm_gemm_s8(q, rows, k, bp, n, acc, ap);
    qm_dyn_rescale_zp(acc, rows, n, s_row, z_row, colsum, w_scale, bias, out, out_f16);
    return 0;
}
