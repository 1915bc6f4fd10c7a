"""The loaders' error contract (issue 16.12) and load-time validation (16.13).

Every malformed checkpoint must raise CheckpointError whose message starts with the file name
and names the field or tensor at fault; through the CLI that is one ``samba-ext: error:``
line and exit code 2. Config values that only fail later (a NaN ``rope_base``, a negative
``norm_eps``, a tokenizer that is not a string) and non-finite weights are refused at load.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samba_ext.config import SambaConfig
from samba_ext.errors import CheckpointError
from samba_ext.model import Samba
from samba_ext.safetensors_io import read_safetensors, write_safetensors

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "fuzz_corpus"
FUZZ_DIR = ROOT / "tests" / "fuzz"  # pth_seeds.py, which builds the run-time .pth inputs


def _model() -> Samba:
    return Samba("samba-test", seed=5)


def _litgpt_file(tmp_path: Path, name: str, **replace: np.ndarray) -> Path:
    """A safetensors file with lit_gpt keys and no samba-ext metadata (config inferred from
    the shapes), some tensors replaced."""
    sd = _model().state_dict()
    sd.update(replace)
    p = tmp_path / name
    write_safetensors(p, sd)
    return p


def _with_config(tmp_path: Path, name: str, config_json: str,
                 sd: dict | None = None) -> Path:
    m = _model()
    p = tmp_path / name
    write_safetensors(p, m.state_dict() if sd is None else sd,
                      {"format": "samba-ext", "config": config_json})
    return p


def _cfg(**kw) -> str:
    d = _model().config.to_dict()
    d.update(kw)
    return json.dumps(d)


E, N, R = 128, 8, 4      # samba-test: d_inner 128, d_state 8, dt_rank 4


def _malformed(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the field the message must name)."""
    return {
        "1d_A_log": (_litgpt_file(tmp_path, "a.safetensors", **{
            "transformer.h.0.attn.A_log": np.zeros(E * N, np.float32)}), "A_log"),
        "1d_dt_proj": (_litgpt_file(tmp_path, "d.safetensors", **{
            "transformer.h.0.attn.dt_proj.weight": np.zeros(E * R, np.float32)}), "dt_proj"),
        "zero_width_embedding": (_litgpt_file(tmp_path, "z.safetensors", **{
            "transformer.wte.weight": np.zeros((259, 0), np.float32)}), "wte"),
        "nested_json_config": (_with_config(tmp_path, "j.safetensors", "[" * 100_000),
                               "config"),
        "huge_zero_element_shape": (_huge_empty(tmp_path), "huge"),
    }


def _huge_empty(tmp_path: Path) -> Path:
    """A safetensors file whose only extra tensor has shape [0, 2**62] (0 bytes)."""
    p = _with_config(tmp_path, "h.safetensors", _cfg())
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    hdr["zz"] = {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}
    hdr = {k: hdr[k] for k in ["zz"] + [k for k in hdr if k != "zz"]}
    hb = json.dumps(hdr).encode()
    hb += b" " * (-len(hb) % 8)
    p.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    return p


CASES = ["1d_A_log", "1d_dt_proj", "zero_width_embedding", "nested_json_config",
         "huge_zero_element_shape"]


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**30, 2**30, 2**30], [2**31, 0]])
def test_huge_empty_shape_raw_reader(tmp_path, shape):
    """read_safetensors itself (not only Samba.load) answers CheckpointError."""
    p = tmp_path / "e.safetensors"
    hb = json.dumps({"e": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    hb += b" " * (-len(hb) % 8)
    p.write_bytes(len(hb).to_bytes(8, "little") + hb)
    with pytest.raises(CheckpointError, match=r"e\.safetensors: tensor 'e': empty tensor"):
        read_safetensors(p)


@pytest.mark.parametrize("case", CASES)
def test_malformed_checkpoint_is_a_checkpoint_error(tmp_path, case):
    path, field = _malformed(tmp_path)[case]
    with pytest.raises(CheckpointError) as ei:
        Samba.load(path)
    msg = str(ei.value)
    assert type(ei.value) is CheckpointError
    assert msg.startswith(str(path)), msg
    assert field in msg, msg


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAMBA_EXT_DEBUG", None)
    code = "import sys; from samba_ext.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_one_line_exit_2(tmp_path):
    """Each malformed file (and a NaN weight) through `samba-ext info`: exit 2, one error line
    naming the file, no traceback."""
    files = [p for p, _ in _malformed(tmp_path).values()]
    files.append(_nan_weight_file(tmp_path))
    for p in files:
        r = _cli(["info", "--model", str(p)], tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, f"{p.name}: exit {r.returncode}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        err = [ln for ln in lines if ln.startswith("samba-ext: error:")]
        assert len(err) == 1 and str(p) in err[0], r.stderr[-2000:]


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_only_checkpoint_errors_escape_the_corpus(tmp_path):
    """Class-wide: every fuzz input (valid seeds, mutants, regressions; stored or built by
    tests/fuzz/pth_seeds.py) through
    Samba.load either loads or raises CheckpointError whose message starts with the file
    name. In a child process capped at 6 GiB (an allocation bomb fails, not the machine)."""
    code = f"""
import sys, shutil, tempfile
from pathlib import Path
sys.modules["torch"] = None     # non-zip files: the package must answer, not torch
from samba_ext.errors import CheckpointError
from samba_ext.model import Samba
bad, n = [], 0
d = Path(tempfile.mkdtemp())
sys.path[:0] = [{str(FUZZ_DIR)!r}]
import pth_seeds
built = Path(tempfile.mkdtemp())
for name, data in pth_seeds.built_files().items():   # the .pth inputs built at run time
    (built / name.replace("/", "_")).write_bytes(data)
srcs = sorted(Path({str(CORPUS)!r}).rglob("*")) + sorted(built.iterdir())
for src in srcs:
    if src.suffix not in (".pth", ".safetensors"):
        continue
    p = d / ("input" + src.suffix)
    shutil.copyfile(src, p)
    n += 1
    try:
        Samba.load(p)
    except CheckpointError as e:
        if not str(e).startswith(str(p)):
            bad.append(f"{{src.name}}: message does not start with the file: {{e}}")
    except BaseException as e:
        bad.append(f"{{src.name}}: {{type(e).__name__}}: {{str(e)[:200]}}")
print(n, "files")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=env, preexec_fn=_limit_memory)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert int(r.stdout.split()[0]) >= 60, r.stdout


# ------------------------------------------------------------------- 16.13: validation ---

@pytest.mark.parametrize("field,value", [
    ("rope_base", float("nan")), ("rope_base", -10000.0), ("rope_base", float("inf")),
    ("rope_base", 0), ("norm_eps", float("nan")), ("norm_eps", -1e-5), ("norm_eps", 0.0),
    ("norm_eps", float("inf")), ("norm_eps", 1e39), ("tokenizer", 5), ("tokenizer", None),
    ("tokenizer", ["byte"]), ("tie_embeddings", "yes"), ("name", 3), ("max_train_len", -1),
    ("layer_types", 5),
])
def test_bad_config_values_refused_at_load(tmp_path, field, value):
    p = _with_config(tmp_path, "c.safetensors", _cfg(**{field: value}))
    with pytest.raises(CheckpointError) as ei:
        Samba.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)) and field in msg, msg


def test_bad_config_values_refused_in_python():
    """The same checks apply to a config built in Python (the loaders use them)."""
    for kw in ({"rope_base": float("nan")}, {"norm_eps": -1.0}, {"tokenizer": 7}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            SambaConfig.preset("samba-test", **kw)


def _nan_weight_file(tmp_path: Path, value: float = float("nan"),
                     key: str = "transformer.h.1.attn.proj.weight", name: str = "nan") -> Path:
    m = _model()
    sd = m.state_dict()
    sd[key][3, 5] = value
    p = tmp_path / f"{name}.safetensors"
    m_meta = {"format": "samba-ext", "config": json.dumps(m.config.to_dict())}
    write_safetensors(p, sd, m_meta)
    return p


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "folder"])
def test_non_finite_weights_refused_at_load(tmp_path, value, fmt):
    key = "transformer.h.1.attn.proj.weight"
    p = _nan_weight_file(tmp_path, value, key)
    if fmt == "pth":
        p = _as_pth(tmp_path, read_safetensors(p)[0])
        kw = {"n_head": 4, "n_kv_head": 2, "window": 16}
    elif fmt == "folder":
        from samba_ext.io.hf_folder import save_pretrained

        m = _model()
        folder = save_pretrained(m, tmp_path / "f")
        sd, meta = read_safetensors(folder / "model.safetensors")
        sd[key][3, 5] = value
        write_safetensors(folder / "model.safetensors", sd, meta)
        p, kw = folder, {}
    else:
        kw = {}
    with pytest.raises(CheckpointError) as ei:
        Samba.load(p, **kw)
    msg = str(ei.value)
    assert msg.startswith(str(p)) and key in msg and "(3, 5)" in msg, msg


def _as_pth(tmp_path: Path, sd: dict) -> Path:
    """A torch-free .pth (hand-built zip) holding ``sd`` as float32 tensors."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    import pth_builder as B

    p = B.Pickle().empty_dict().mark().str("model").empty_dict().mark()
    storages = {}
    for i, (k, a) in enumerate(sorted(sd.items())):
        a = np.ascontiguousarray(a, "<f4")
        strides = tuple(s // 4 for s in a.strides)
        p.str(k).tensor(str(i), a.size, 0, a.shape, strides)
        storages[str(i)] = a.tobytes()
    out = tmp_path / "w.pth"
    out.write_bytes(B.torch_zip(p.setitems().setitems().stop(), storages))
    return out


def test_finite_check_is_vectorised_and_exact():
    """check_finite finds one bad value among a million, and passes large finite values
    whose float32 sum would overflow (the sum is taken in float64)."""
    from samba_ext.io.load import check_finite

    a = np.full(1_000_000, 3e38, np.float32)
    check_finite({"big": a}, "f")
    a[765_432] = np.nan
    with pytest.raises(CheckpointError, match=r"f: tensor 'big' holds 1 non-finite .*765432"):
        check_finite({"big": a}, "f")


def test_bad_override_is_the_callers_error_not_the_files(tmp_path):
    """Samba.load(path, window=0) blamed the file ("invalid config in the metadata field");
    an override that makes a valid stored config invalid is a ValueError naming the field."""
    from samba_ext import Samba, SambaConfig
    from samba_ext.errors import CheckpointError

    path = tmp_path / "m.safetensors"
    Samba(SambaConfig.preset("samba-test"), seed=0).save(path)
    for kw, field in (({"window": 0}, "window"), ({"bogus": 3}, "bogus"),
                      ({"n_head": 3}, "n_head")):
        with pytest.raises(ValueError, match=f"^{field}: ") as e:
            Samba.load(path, **kw)
        assert not isinstance(e.value, CheckpointError)
    assert Samba.load(path, window=8).config.window == 8


def test_save_and_load_arguments_are_checked(tmp_path):
    """Bad save / load arguments name the argument (they were AttributeErrors, or a file
    written with a user 'config' entry that the next load refused)."""
    from samba_ext import Samba, SambaConfig

    m = Samba(SambaConfig.preset("samba-test"), seed=0)
    f = tmp_path / "m.safetensors"
    cases = ((lambda: Samba.load(None), TypeError, "path_or_name"),
             (lambda: m.save(f, dtype=None), ValueError, "dtype"),
             (lambda: m.save(tmp_path / "d/", dtype="F64"), ValueError, "dtype"),
             (lambda: m.save(f, metadata="x"), TypeError, "metadata"),
             (lambda: m.save(f, metadata={"config": "evil"}), ValueError, "'config'"),
             (lambda: m.save(tmp_path / "d/", metadata={"format": "x"}), ValueError, "'format'"))
    for call, exc, what in cases:
        with pytest.raises(exc, match=what):
            call()
    assert not f.exists() and not (tmp_path / "d").exists()   # nothing written
    m.save(f, metadata={"note": "kept"}, dtype="bf16")
    assert Samba.load(f).metadata["note"] == "kept"
