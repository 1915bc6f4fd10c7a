// conv_seq.cuh - the argument rule of causal_conv1d's packed sequences (seq_idx), shared by the
// forward (conv.cu) and the backward (conv_bwd.cu) launchers.
#ifndef SAMBA_CONV_SEQ_CUH
#define SAMBA_CONV_SEQ_CUH

#include "cu_common.cuh"

// seq_idx absent (ptr NULL): SAMBA_OK. Present: int32 or int64 with strides seq_s, and no
// state argument (states: 1 when the call has initial / final states or their gradients).
static inline samba_status conv_seq_check(const char *what, samba_cu_ref seq_idx,
                                          const int64_t *seq_s, bool states) {
    if (seq_idx.ptr == NULL) return SAMBA_OK;
    if (states)
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: seq_idx (packed sequences) takes no "
                                 "initial or final states, nor their gradients", what);
    if (seq_s == NULL || (seq_idx.dtype != SAMBA_CU_I32 && seq_idx.dtype != SAMBA_CU_I64))
        return samba_cu_fail_msg(SAMBA_ERR_ARG, "%s: seq_idx must be int32 or int64 with its "
                                 "strides, got dtype code %d", what, seq_idx.dtype);
    return SAMBA_OK;
}

#endif
