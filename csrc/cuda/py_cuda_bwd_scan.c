/*
 * py_cuda_bwd_scan.c - thin wrappers of the CUDA backward launchers of the selective scan and
 * the causal conv1d (csrc/cuda/samba_cuda_bwd_scan.h), as py_cuda_kernels.c does for the
 * forwards: arguments positional and already checked (samba_ext/ops/contracts.py,
 * samba_ext/cuda/grad_scan.py), sizes as ints, arrays as (ptr, dtype) tuples or None, raw
 * float32 buffers as ints or None, element strides as tuples, streams as int handles. A
 * failed launcher's status becomes the exception of samba_pycu_raise().
 */
#include "py_cuda.h"
#include "samba_cuda_bwd_scan.h"

#include <string.h>

#define REF samba_pycu_ref
#define PTR samba_pycu_ptr
#define I64S samba_pycu_i64s_conv

static void
copy_n(int64_t *dst, const samba_pycu_i64s *src, int n)
{
    for (int i = 0; i < n; ++i) {
        dst[i] = i < src->n ? src->v[i] : 0;
    }
}

/* selective_scan_bwd(batch, dim, dstate, seqlen, ngroups, u, delta, A, B, C, D, z,
 *     delta_bias, dout, u_s, delta_s, z_s, dout_s, B_s, C_s, softplus, initial_state,
 *     dlast_state, du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dinitial_state, stream) */
static PyObject *
py_selective_scan_bwd(PyObject *self, PyObject *args)
{
    samba_cu_scan_bwd_args a;
    samba_pycu_i64s us, ds, zs, ys, bs, cs;
    void *init, *dlast, *dA, *dB, *dC, *dD, *ddb, *dinit, *stream;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTuple(args, "LLLLLO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&iO&O&O&O&O&O&O&O&O&O&O&O&",
                          &a.batch, &a.dim, &a.dstate, &a.seqlen, &a.ngroups, REF, &a.u, REF,
                          &a.delta, REF, &a.A, REF, &a.B, REF, &a.C, REF, &a.D, REF, &a.z, REF,
                          &a.delta_bias, REF, &a.dout, I64S, &us, I64S, &ds, I64S, &zs, I64S,
                          &ys, I64S, &bs, I64S, &cs, &a.delta_softplus, PTR, &init, PTR, &dlast,
                          REF, &a.du, REF, &a.ddelta, REF, &a.dz, PTR, &dA, PTR, &dB, PTR, &dC,
                          PTR, &dD, PTR, &ddb, PTR, &dinit, PTR, &stream)) {
        return NULL;
    }
    copy_n(a.u_s, &us, 3);
    copy_n(a.delta_s, &ds, 3);
    copy_n(a.z_s, &zs, 3);
    copy_n(a.dout_s, &ys, 3);
    copy_n(a.B_s, &bs, 4);
    copy_n(a.C_s, &cs, 4);
    a.initial_state = (const float *)init;
    a.dlast_state = (const float *)dlast;
    a.dA = (float *)dA;
    a.dB = (float *)dB;
    a.dC = (float *)dC;
    a.dD = (float *)dD;
    a.ddelta_bias = (float *)ddb;
    a.dinitial_state = (float *)dinit;
    return samba_pycu_status_none(samba_cu_scan_bwd(&a, stream));
}

/* causal_conv1d_bwd(batch, dim, seqlen, width, x, x_s, dy, dy_s, weight, bias,
 *     initial_states, dfinal_states, seq_idx, seq_s, silu, dx, dweight, dbias,
 *     dinitial_states, stream)
 * seq_idx: None or an int32 / int64 (batch, seqlen) ref, seq_s its 2 strides */
static PyObject *
py_causal_conv1d_bwd(PyObject *self, PyObject *args)
{
    long long batch, dim, seqlen, width;
    samba_cu_ref x, dy, w, bias, seq, dx;
    samba_pycu_i64s xs, ys, ss;
    void *init, *dfin, *dw, *dbias, *dinit, *stream;
    int silu;
    if (!PyArg_ParseTuple(args, "LLLLO&O&O&O&O&O&O&O&O&O&iO&O&O&O&O&", &batch, &dim, &seqlen,
                          &width, REF, &x, I64S, &xs, REF, &dy, I64S, &ys, REF, &w, REF, &bias,
                          PTR, &init, PTR, &dfin, REF, &seq, I64S, &ss, &silu, REF, &dx, PTR,
                          &dw, PTR, &dbias, PTR, &dinit, PTR, &stream)) {
        return NULL;
    }
    int64_t x_s[3], y_s[3], s_s[2];
    copy_n(x_s, &xs, 3);
    copy_n(y_s, &ys, 3);
    copy_n(s_s, &ss, 2);
    return samba_pycu_status_none(samba_cu_conv1d_bwd(
        batch, dim, seqlen, width, x, x_s, dy, y_s, w, bias, (const float *)init,
        (const float *)dfin, seq, s_s, silu, dx, (float *)dw, (float *)dbias, (float *)dinit,
        stream));
}

/* scan_bwd_launches(): backward scan calls per kernel so far, (split, tiled). */
static PyObject *
py_scan_bwd_launches(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(LL)", samba_cu_scan_bwd_launches(0), samba_cu_scan_bwd_launches(1));
}

PyMethodDef samba_pycu_bwd_scan_methods[] = {
    {"scan_bwd_launches", py_scan_bwd_launches, METH_NOARGS,
     "scan_bwd_launches($module, /)"
     "\n--\n\nSelective-scan backward calls so far per kernel: (split, tiled)."},
    {"selective_scan_bwd", py_selective_scan_bwd, METH_VARARGS,
     "selective_scan_bwd($module, batch, dim, dstate, seqlen, ngroups, u, delta, A, B, C, D, "
     "z, delta_bias, dout, u_s, delta_s, z_s, dout_s, B_s, C_s, softplus, initial_state, "
     "dlast_state, du, ddelta, dz, dA, dB, dC, dD, ddelta_bias, dinitial_state, stream, /)"
     "\n--\n\nLaunch the selective scan backward (arguments: see py_cuda_bwd_scan.c)."},
    {"causal_conv1d_bwd", py_causal_conv1d_bwd, METH_VARARGS,
     "causal_conv1d_bwd($module, batch, dim, seqlen, width, x, x_s, dy, dy_s, weight, bias, "
     "initial_states, dfinal_states, seq_idx, seq_s, silu, dx, dweight, dbias, "
     "dinitial_states, stream, /)"
     "\n--\n\nLaunch the causal conv1d backward (arguments: see py_cuda_bwd_scan.c)."},
    {NULL, NULL, 0, NULL}};
