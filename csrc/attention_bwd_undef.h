/* attention_bwd_undef.h - clears the instruction-set macros that attention_bwd_simd.c defines
 * before each inclusion of attention_bwd_tile.h, so the next instruction set can define them
 * again. Included right after each attention_bwd_tile.h. */
#undef ABT_SFX
#undef ABT_TGT
#undef ABT_V
#undef ABT_VW
#undef ABT_R
#undef ABT_NV
#undef VLOADU
#undef VSTOREU
#undef VSET1
#undef VZERO
#undef VFMA
#undef VMUL
#undef VADD
#undef VSUB
#undef VMAX
#undef VEXP2
#undef VHSUM
#undef VHMAX
#undef VIOTA
#undef VKEEP
