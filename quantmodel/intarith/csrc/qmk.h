/* The kernels' entry points: the one declaration table. quantmodel/ckernels.py reads these prototypes to set
   the ctypes argument and result types (pointers -> void*, int64_t, int, float, double), so a signature is
   written once, here; qmk.c includes this file, so the compiler checks that the definitions agree. */
#ifndef QMK_H
#define QMK_H

#include <stdint.h>

#if !defined(__FLT16_MAX__)
#error "the kernels need the C compiler's _Float16 type (gcc >= 12 or clang on x86-64 / AArch64)"
int qm_dyn_act_quant(const void* x, int in_kind, int64_t n, double headroom, int64_t qmax, int32_t* out,
                     double* s_out);
int64_t qm_gemm_pack_b_size(int64_t k, int64_t n);
void qm_gemm_pack_b(const int8_t* b, int64_t k, int64_t n, int16_t* bp);
int64_t qm_gemm_pack_a_size(int64_t m, int64_t k);
void qm_gemm_s8(const int8_t* a, int64_t m, int64_t k, const int16_t* bp, int64_t n, int32_t* out, int16_t* ap);

int qm_dyn_linear_s8(const void* x, int in_kind, int64_t rows, int64_t k, int64_t qmax, int8_t* q, float* s_row,
                     const int16_t* bp, int64_t n, int32_t* acc, int16_t* ap, const float* w_scale, const float* bias,
                     void* out, int out_f16);
int qm_dyn_linear_zp_s8(const void* x, int in_kind, int64_t rows, int64_t k, int64_t bits, int8_t* q, float* s_row,
                        int32_t* z_row, const int16_t* bp, int64_t n, int32_t* acc, int16_t* ap, const int32_t* colsum,
                        const float* w_scale, const float* bias, void* out, int out_f16);

#endif
typedef _Float16 f16;

void qm_requant(const int32_t* acc, int64_t rows, int64_t n, int64_t acc_stride, const int32_t* bias,
                const double* c, const double* lim, const int64_t* m, const int64_t* s, double qmin,
                double qmax, void* out, int out_kind, int64_t out_stride);
void qm_act_quant(const void* x, int in_kind, int64_t n, float recip, float qmax, void* out, int out_kind,
                  const float* chmul, int64_t c);
void qm_act_quant_zp(const void* x, int in_kind, int64_t n, float recip, float lo, float hi, float zero, int8_t* out,
                     const float* chmul, int64_t c);
int qm_dequant(const void* q, int in_kind, int64_t n, float scale, void* out, int out_kind);
void qm_dequant_f64(const int32_t* q, int64_t n, double s, float* out);
void qm_ln_stats(const f16* x, int64_t rows, int64_t n, float eps, float* mean_out, float* ve_out, float* ws);
void qm_ln_apply(const f16* x, int64_t rows, int64_t n, const float* mean, const float* rstd, void* out,
                 int mod, const float* scale, const float* shift, int64_t pstride, const float* inv,
                 int64_t rows_per_batch, float* ws, float qrecip, float qmax);
void qm_residual_fp16(const f16* x, const void* y, int y_kind, float y_scale, const float* gate,
                      int64_t gstride, int64_t bsz, int64_t nrow, int64_t c, f16* out, float* ws);
void qm_softmax_pre(const void* x, int x_f16, float scale, int scaled, int64_t rows, int64_t n, float* dbuf);
void qm_softmax_post(float* ebuf, int64_t rows, int64_t n, f16* out, float* ws);
void qm_merge_heads_quant(const float* in, int64_t B, int64_t H, int64_t N, int64_t D, float recip,
                          float qmax, int8_t* out);
void qm_split_heads(const void* q, int in_kind, float scale, int64_t B, int64_t N, int64_t P, int64_t H,
                    int64_t D, float* out, int64_t tmask);
void qm_gelu_pre(const f16* x, int64_t n, float* inner);
void qm_gelu_post(const f16* x, int64_t n, const float* th, f16* out);
void qm_fp16_axpy(const f16* x, const f16* y, const f16* g, const f16* c2, int64_t bsz, int64_t nrow,
                  int64_t c, int op, f16* out, float* ws);
int qm_ln_eps_table(double scale, int64_t n, double eps, int64_t* out);
void qm_layernorm_int(const int32_t* x, int64_t rows, int64_t n, const int64_t* eps_k, int32_t* out);
void qm_softmax_int(const int32_t* q, int64_t rows, int64_t n, int64_t k, int64_t q_ln2, int64_t q_b,
                    int64_t q_c, int64_t p, int32_t* out, int64_t* ebuf);
void qm_gelu_int(const int32_t* x, int64_t n, int64_t k, int64_t sat, int64_t q_bb, int64_t q_one, int64_t t,
                 int32_t* out);
void qm_fix_madd(const int32_t* A, double ca, double la, int64_t ma, int64_t sa, const double* F,
                 const int32_t* Bq, double cb, double lb, int64_t mb, int64_t sb, const double* Rbc,
                 int64_t bsz, int64_t nrow, int64_t c, double qmin, double qmax, int32_t* out, double* ws);
int qm_fix_madd_r(const int32_t* A, double real_a, const double* F, const int32_t* Bq, double real_b,
                  const double* Rbc, int64_t bsz, int64_t nrow, int64_t c, double qmin, double qmax, int32_t* out,
                  double* ws);
int qm_param_quant(const float* t, int64_t bsz, int64_t c, int64_t bstride, int64_t qmax, int32_t* out,
                   double* s_out);
int qm_dyn_quant(const void* x, int in_kind, int64_t rows, int64_t k, int64_t qmax, int8_t* out,
                 float* s_out);
int qm_dyn_rows(const void* x, int in_kind, int64_t d0, int64_t d1, int64_t rows, int64_t k, int64_t s0, int64_t s1,
                int64_t sr, int64_t sk, int64_t qmax, void* xbuf, int8_t* q8, float* qf, float* s_out);
int qm_dyn_product(const float* A, const float* B, int64_t batch, int64_t m, int64_t k, int64_t n, const float* sa,
                   const float* sb, float* y);
void qm_scale_rows_cols(float* y, int64_t batch, int64_t m, int64_t n, const float* sa, const float* sb);
void qm_dyn_rescale(const int32_t* acc, int64_t rows, int64_t n, const float* s_row, const float* w_scale,
                    const float* bias, void* out, int out_f16);
int qm_dyn_quant_zp(const void* x, int in_kind, int64_t rows, int64_t k, int64_t bits, int8_t* out, float* s_out,
                    int32_t* z_out);
void qm_dyn_rescale_zp(const int32_t* acc, int64_t rows, int64_t n, const float* s_row, const int32_t* z_row,
                       const int32_t* colsum, const float* w_scale, const float* bias, void* out, int out_f16);
void qm_split_heads_q8(const void* q, int in_kind, int64_t B, int64_t N, int64_t P, int64_t H, int64_t D,
                       const int64_t* mult, const int64_t* shift, int64_t qmax, float* out, int64_t tmask);
int qm_mod_operands(const float* scale, const float* shift, int64_t pstride, const float* inv, int64_t bsz,
                    int64_t c, double s_out, int64_t qmax, double* f, double* r, float* fw, int32_t* qw);
double qm_absmax(const void* x, int in_kind, int64_t n);
double qm_mod_absmax(const int32_t* x, double sx, const float* scale, const float* shift, int64_t pstride,
                     int64_t bsz, int64_t n, int64_t c);
double qm_gated_absmax(const int32_t* x, double sx, const int32_t* g, double sg, const int32_t* y, double sy,
                       int64_t bsz, int64_t n, int64_t c);
double qm_gated_absmax_p(const int32_t* x, double sx, const float* gate, int64_t gstride, int64_t qmax, int32_t* gq,
                         const int32_t* y, double sy, int64_t bsz, int64_t n, int64_t c);

int64_t qm_gemm_pack_b_size(int64_t k, int64_t n);
void qm_gemm_pack_b(const int8_t* b, int64_t k, int64_t n, int16_t* bp);
int64_t qm_gemm_pack_a_size(int64_t m, int64_t k);
void qm_gemm_s8(const int8_t* a, int64_t m, int64_t k, const int16_t* bp, int64_t n, int32_t* out, int16_t* ap);

#endif
