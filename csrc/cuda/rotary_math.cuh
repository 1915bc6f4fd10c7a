// rotary_math.cuh - the arithmetic every CUDA rotary kernel shares, so that they agree bit for
// bit (rotary.cu's general and token kernels, and the decode step's rotary with the K/V cache
// write): the angle of pair i at position p in float64, then the rotation in float32 with each
// product rounded on its own (no fused multiply-add, whose choice the compiler would make per
// kernel).
#ifndef SAMBA_ROTARY_MATH_CUH
#define SAMBA_ROTARY_MATH_CUH

// cos and sgn * sin of p * base^(-2i/hd) (log_base = ln base), as float32.
__device__ __forceinline__ void rot_angle(int64_t p, int64_t i, int64_t hd, double log_base,
                                          float sgn, float *c, float *s) {
    const double inv_freq = exp(-(2.0 * (double)i / (double)hd) * log_base);
    double sn, cs;
    sincos((double)p * inv_freq, &sn, &cs);
    *c = (float)cs;
    *s = sgn * (float)sn;
}

// (y1, y2) = (x1 c - x2 s, x1 s + x2 c).
__device__ __forceinline__ void rot_pair(float x1, float x2, float c, float s, float *y1,
                                         float *y2) {
    *y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    *y2 = __fadd_rn(__fmul_rn(x1, s), __fmul_rn(x2, c));
}

#endif
