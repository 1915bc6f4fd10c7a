"""samba_ext.cuda.blas.product_dtype (no GPU needed): the one rule for the output dtype of the
CUDA products (linear, rms_norm_linear, swiglu_linear): float32 or the inputs' dtype."""
from __future__ import annotations

import pytest

from samba_ext.cuda.blas import product_dtype


def test_default_and_allowed_dtypes():
    assert product_dtype(None, "bfloat16") == "bfloat16"
    assert product_dtype("float32", "bfloat16") == "float32"
    assert product_dtype("float16", "float16") == "float16"


@pytest.mark.parametrize("bad", ["float16", "int8"])
def test_other_dtypes_raise_naming_the_argument(bad):
    with pytest.raises(TypeError, match="^out_dtype: expected float32 or bfloat16"):
        product_dtype(bad, "bfloat16")
    with pytest.raises(TypeError, match="^dt_dtype: expected float32 or bfloat16"):
        product_dtype(bad, "bfloat16", "dt_dtype")
