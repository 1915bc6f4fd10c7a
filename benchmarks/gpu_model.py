"""GPU model throughput: the Samba paper's Figure 3 protocol at full size, in one run.

    python3 benchmarks/gpu_model.py                 # writes benchmarks/results/gpu_model.json,
                                                    # gpu_model_figure3.md and two PNG plots
    python3 benchmarks/gpu_model.py --quick         # small lengths and contexts (a smoke run)
    python3 benchmarks/gpu_model.py --models samba-1.7b,hf-llama --lengths 4096,131072

Models (random weights: speed does not depend on them): samba_ext presets ``samba-1.7b``,
``llama3-1.6b``, ``mistral-1.6b`` (any preset name, with the ``:llama|:mistral|:mamba`` suffixes
of :func:`samba_ext.eval.throughput.resolve_config`), built with ``Samba(cfg, seed=0,
device="cuda")`` (bf16 weights, float32 activations and caches); and ``hf-llama``: transformers'
``LlamaForCausalLM`` with the shapes of ``--hf-shapes`` (default llama3-1.6b: vocab 50304,
hidden 2048, 24 layers, 32 query / 4 KV heads of 64, MLP 8196, untied head), bf16, SDPA
(benchmarks/gpu_model_hf.py; without transformers its row says so).

Measured, each model in turn (built, measured, freed):

* Prefill tokens/s at each prompt length L with ``--total-tokens`` (128K) tokens per point:
  one call on a batch of total // L prompts. samba_ext: ``model.prefill`` with chunk_size
  ``--chunk-size`` (8192) into a state whose full-attention caches are preallocated for L
  (``new_state(B, capacity=L)``: no regrowth copies); transformers: ``model(ids,
  use_cache=False, logits_to_keep=1)`` under inference mode. Time: wall clock around the call
  with device synchronisation; warm-up first; median of 3 runs when one run takes under 2 s,
  else one run. Before a point whose time cannot be estimated from the shorter lengths, or
  is estimated above ``--cap-s`` (90 s), one prompt of length L is timed alone (the warm-up);
  a point still estimated above the cap is skipped with a note (estimate in the JSON).
* Decode tokens/s at batch 16 with a context of C tokens (4K..64K): a state (or a
  transformers cache) made as if C tokens had been consumed -- positions at C, every cache
  slot filled with random values (decode cost does not depend on them) -- then 4 untimed and
  12 timed ``step`` calls, each synchronised; tokens/s = batch / median step time. No prefill
  of 16 x 64K tokens. transformers: a ``DynamicCache`` (the default of ``generate``) and a
  ``StaticCache`` are both timed; the faster is the baseline of the ratios.
* Decode ms/token at batch 1 with a 4K context, against the weight-read floor: the bytes of
  the bf16 weights one token reads (every matrix once, the embedding table one row unless it
  is also the output head) / the device-to-device copy bandwidth measured at the start of
  the run (2 GiB copied, read + write bytes counted).

Output: a printed table; ``OUT/gpu_model.json`` (date, commit from $GIT_COMMIT or git, device,
every number); the section between the ``gpu_model.py`` markers of ``OUT/gpu_model_figure3.md``
(text outside them is kept) with the issue's target ratios, met or not; and
``OUT/gpu_model_prefill.png`` / ``gpu_model_decode.png`` when matplotlib is installed. Files
are written atomically, the JSON after every model (a run cut short keeps what finished).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

K = 1024
HF_NAMES = ("hf-llama", "transformers-llama")
DEFAULT_MODELS = ("samba-1.7b", "llama3-1.6b", "mistral-1.6b", "hf-llama")
DEFAULT_LENGTHS = (4 * K, 32 * K, 128 * K)
DEFAULT_CONTEXTS = (4 * K, 8 * K, 16 * K, 32 * K, 64 * K)
QUICK_LENGTHS = (1 * K, 4 * K)
QUICK_CONTEXTS = (1 * K, 4 * K)
CHEAP_S = 2.0          # a prefill run shorter than this is repeated (median of 3)


# ------------------------------------------------------------------ pure helpers ---
def weight_read_bytes(cfg: Any, bytes_per_param: int = 2) -> int:
    """Bytes of weights one decode token reads, all weights counted at ``bytes_per_param``
    (bf16: 2): every block matrix and vector once, the output head (vocab x d_model) once,
    and one row of the embedding table -- the whole table only where it is the head
    (tied). cfg: a SambaConfig. The float32 vectors of the CUDA backend (norms, biases,
    A, D, conv taps; < 0.1% of the parameters) are counted at bf16 size too."""
    n = cfg.num_parameters()
    V, D = cfg.vocab_size, cfg.d_model
    if cfg.tie_embeddings:
        n += D                  # the looked-up row; the table itself is read as the head
    else:
        n += D - V * D          # the table is only looked up: one row of it
    return int(n) * int(bytes_per_param)


def floor_ms(nbytes: float, bandwidth: float) -> float:
    """Milliseconds to read ``nbytes`` at ``bandwidth`` bytes/s."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth: expected > 0 bytes/s, got {bandwidth!r}")
    return 1000.0 * float(nbytes) / float(bandwidth)


def copy_bandwidth_from(nbytes: int, seconds: float) -> float:
    """Bandwidth of a device-to-device copy of ``nbytes``: (read + write) bytes / seconds."""
    return 2.0 * nbytes / seconds


def batch_for(L: int, total: int) -> int:
    """Prompts per prefill point: total // L, at least 1."""
    return max(1, int(total) // int(L))


def estimate_prefill_s(done: list[tuple[int, float]], L: int, full_attention: bool
                       ) -> Optional[float]:
    """Estimated seconds of a prefill point at length L (same total tokens) from the points
    already timed, ``done`` = [(length, seconds)]: the time of a point is close to a + b * L
    (per-token work plus attention over the prompt), fitted through the two longest lengths
    and never below the longest's time; from one point, t * L / L0 for a model with full
    attention (all work attention: an upper bound) and t for the others. None without
    points."""
    pts = sorted((int(a), float(t)) for a, t in done if t > 0)
    if not pts:
        return None
    L1, t1 = pts[-1]
    if L <= L1:
        return t1
    if len(pts) == 1:
        return t1 * L / L1 if full_attention else t1
    L0, t0 = pts[-2]
    b = max(0.0, (t1 - t0) / (L1 - L0))
    return max(t1, t1 + b * (L - L1))


def fill_random(be: Any, dst: Any, start: int, stop: int, block: Any, axis: int) -> None:
    """In place: positions start..stop-1 of ``dst`` along ``axis`` get the values of
    ``block`` (a backend array shaped like ``dst`` with at least one position along
    ``axis``), repeated as often as needed."""
    m = block.shape[axis]
    for s in range(start, stop, m):
        e = min(s + m, stop)
        src = block if e - s == m else block[(slice(None),) * axis + (slice(0, e - s),)]
        be.put(dst, np.arange(s, e, dtype=np.int64), src, axis)


def state_at_context(model: Any, batch: int, ctx: int, extra: int = 64, seed: int = 0,
                     block_positions: int = 2048) -> Any:
    """A SambaState of ``batch`` sequences as if ``ctx`` tokens had been consumed, without
    running them: ``pos`` = ctx; every Mamba conv / SSM state, every SWA ring slot that ctx
    tokens would fill (min(ctx, window)) and the first ctx slots of every full-attention
    cache hold random values (N(0, 1) keys and values, N(0, 0.1) Mamba states; decode cost
    does not depend on them); full-attention caches hold ``ctx + extra`` positions, so
    ``extra`` decode steps run without regrowing them. ``logits`` are zeros (B, vocab).
    Memory: the model's own state arrays (``model.new_state``), plus one random block of
    ``block_positions`` positions uploaded once and copied into place."""
    if ctx < 1 or batch < 1 or extra < 0:
        raise ValueError(f"state_at_context: expected batch >= 1, ctx >= 1, extra >= 0, got "
                         f"{batch}, {ctx}, {extra}")
    cfg, be = model.config, model.backend
    st = model.new_state(batch, capacity=ctx + extra)
    rng = np.random.default_rng(seed)
    G, hd = cfg.n_kv_head, cfg.head_dim
    kv_block = None
    rows = np.arange(batch, dtype=np.int64)
    for kind, d in zip(st.kinds, st.layers):
        if kind == "mamba":
            for key in ("conv", "ssm"):
                a = rng.standard_normal(tuple(d[key].shape), dtype=np.float32) * 0.1
                be.put(d[key], rows, be.asarray(a), 0)
            continue
        n = min(ctx, cfg.window) if kind == "swa" else ctx
        if kv_block is None:
            m = max(1, min(block_positions, ctx))
            kv_block = be.asarray(rng.standard_normal((batch, m, G, hd), dtype=np.float32))
        for key in ("k", "v"):
            # SWA: positions ctx-n..ctx-1 sit in slots p % window, i.e. n distinct slots;
            # when n == window that is every slot, when n < window (ctx < window) slots 0..n-1
            fill_random(be, d[key], 0, n, kv_block, 1)
    st.pos[:] = ctx
    st.logits = np.zeros((batch, cfg.vocab_size), np.float32)
    return st


# ------------------------------------------------------------------- environment ---
def git_commit() -> str:
    """$GIT_COMMIT, else ``git rev-parse --short HEAD`` (+ a dirty mark), else 'unknown'."""
    env = os.environ.get("GIT_COMMIT")
    if env:
        return env
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
        if not h:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return h + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": sys.version.split()[0], "numpy": np.__version__}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def measure_copy_bandwidth(device: str, nbytes: int = 2 << 30, reps: int = 10
                           ) -> dict[str, Any]:
    """Device-to-device copy of ``nbytes`` (torch when installed, else the samba_ext CUDA
    backend; host memcpy for a CPU device): median seconds and (read + write) bytes/s."""
    if device.startswith("cuda"):
        try:
            import torch
            src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            for _ in range(3):
                dst.copy_(src)
            torch.cuda.synchronize()
            ts = []
            for _ in range(reps):
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                dst.copy_(src)
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b) / 1000.0)
            del src, dst
            torch.cuda.empty_cache()
            method = "torch.Tensor.copy_, CUDA events"
        except ImportError:
            from samba_ext.backend import get_backend
            from samba_ext.cuda.runtime import synchronize
            be = get_backend(device)
            x = be.zeros((nbytes // 4,))
            for _ in range(3):
                be.copy(x)
            synchronize(getattr(be, "index", 0))
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                be.copy(x)
                synchronize(getattr(be, "index", 0))
                ts.append(time.perf_counter() - t)
            del x
            method = "samba_ext CUDA backend copy, wall clock with synchronisation"
    else:
        src = np.ones(nbytes, np.uint8)
        dst = np.empty_like(src)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            np.copyto(dst, src)
            ts.append(time.perf_counter() - t)
        method = "numpy.copyto (host)"
    t = statistics.median(ts)
    return {"bytes": int(nbytes), "time_s": t, "bandwidth_Bps": copy_bandwidth_from(nbytes, t),
            "method": method, "repeats": reps}


# ------------------------------------------------------------------ our models ---
class Ours:
    """A samba_ext model under test: prefill / decode callables with device sync."""

    kind = "samba_ext"

    def __init__(self, label: str, device: str, chunk_size: int, seed: int = 0):
        from samba_ext import Samba
        from samba_ext.eval.throughput import resolve_config

        self.label = label
        self.cfg = resolve_config(label)
        t = time.perf_counter()
        self.model = Samba(self.cfg, seed=seed, device=device)
        self.sync()
        self.build_s = time.perf_counter() - t
        self.chunk_size = int(chunk_size)
        self.full_attention = "attn" in self.cfg.layer_types
        self.vocab = self.cfg.vocab_size

    def sync(self) -> None:
        be = self.model.backend
        if str(be.device).startswith("cuda"):
            from samba_ext.cuda.runtime import synchronize
            synchronize(getattr(be, "index", 0))

    def info(self) -> dict[str, Any]:
        c = self.cfg
        return {"kind": self.kind, "config": self.label, "num_parameters": c.num_parameters(),
                "weight_read_bytes": weight_read_bytes(c), "build_s": self.build_s,
                "layer_types": {t: c.layer_types.count(t) for t in ("mamba", "swa", "attn")
                                if t in c.layer_types},
                "window": c.window, "chunk_size": self.chunk_size,
                "backend": repr(self.model.backend)}

    def prefill(self, tokens: np.ndarray) -> None:
        B, L = tokens.shape
        st = self.model.new_state(B, capacity=L)
        self.model.prefill(tokens, st, chunk_size=self.chunk_size)
        self.sync()

    def decoder(self, batch: int, ctx: int, n_steps: int, seed: int = 0
                ) -> tuple[Callable[[np.ndarray], None], dict[str, Any]]:
        st = state_at_context(self.model, batch, ctx, extra=n_steps + 1, seed=seed)
        model = self.model

        def step(tok: np.ndarray) -> None:
            model.step(tok, st)          # returns host logits: synchronised already
            self.sync()
        return step, {"state_bytes": int(st.nbytes()), "cache": "state"}

    def close(self) -> None:
        be = self.model.backend
        del self.model
        gc.collect()
        if str(be.device).startswith("cuda"):
            try:
                from samba_ext.cuda.memory import empty_cache
                empty_cache(getattr(be, "index", 0))
            except Exception:        # trimming is best effort
                pass


# ------------------------------------------------------------------- measuring ---
def time_call(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def prefill_point(m: Any, L: int, total: int, cap_s: float, done: list[tuple[int, float]],
                  rng: np.random.Generator, repeats: int = 3) -> dict[str, Any]:
    """One prefill point of model ``m`` (Ours or the transformers wrapper): see the module
    docstring. ``done`` holds the model's earlier (length, seconds) for the estimate."""
    B = batch_for(L, total)
    cell: dict[str, Any] = {"model": m.label, "length": int(L), "batch": B, "calls": 1,
                            "tokens": B * int(L)}
    if getattr(m, "chunk_size", None):
        cell["chunk_size"] = m.chunk_size
    est = estimate_prefill_s(done, L, m.full_attention)
    cell["estimate_s"] = est
    x = rng.integers(0, m.vocab, (B, L))
    warmed = False
    if est is not None and est / B > cap_s:
        cell["skipped"] = (f"estimated {est:.0f} s > cap {cap_s:.0f} s (from the shorter "
                           "lengths; even one prompt alone would pass the cap)")
        return cell
    if (est is None or est > cap_s) and B > 1:
        tp = time_call(lambda: m.prefill(x[:1]))        # one prompt alone: warm-up + probe
        cell["probe_s"] = tp
        est = B * tp
        cell["estimate_s"] = est
        warmed = True
    if est is not None and est > cap_s:
        cell["skipped"] = (f"estimated {est:.0f} s > cap {cap_s:.0f} s"
                           + (f" (one prompt of {L} tokens alone: {cell['probe_s']:.1f} s)"
                              if "probe_s" in cell else " (from the shorter lengths)"))
        return cell
    if not warmed:       # kernels / pools for this batch: a short slice of the same input
        chunk = getattr(m, "chunk_size", None) or L
        m.prefill(x[:max(1, B // 8), :min(L, chunk)])
    times = [time_call(lambda: m.prefill(x))]
    while len(times) < repeats and times[0] < CHEAP_S:
        times.append(time_call(lambda: m.prefill(x)))
    t = statistics.median(times)
    cell.update(times_s=times, time_s=t, tokens_per_s=B * L / t)
    done.append((int(L), t))
    return cell


def decode_point(m: Any, batch: int, ctx: int, warm: int, steps: int,
                 rng: np.random.Generator, **kw: Any) -> dict[str, Any]:
    """``warm`` untimed and ``steps`` timed decode steps from a state at context ``ctx``."""
    step, meta = m.decoder(batch, ctx, warm + steps, **kw)
    toks = rng.integers(0, m.vocab, (warm + steps, batch))
    for i in range(warm):
        step(toks[i])
    ts = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(toks[warm + i])
        ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    cell = {"model": m.label, "batch": int(batch), "context": int(ctx), "warm_steps": warm,
            "steps": steps, "step_s": ts, "ms_per_step": 1000 * t,
            "tokens_per_s": batch / t}
    cell.update(meta)
    del step, meta       # the state / cache: freed before the next point allocates its own
    gc.collect()
    return cell


def run_model(m: Any, p: dict[str, Any], res: dict[str, Any], log: Callable[[str], None],
              bandwidth: float) -> None:
    """Every measurement of one model into ``res`` (cells appended as they finish)."""
    rng = np.random.default_rng(p["seed"])
    done: list[tuple[int, float]] = []
    for L in p["lengths"]:
        try:
            c = prefill_point(m, L, p["total_tokens"], p["cap_s"], done, rng)
        except Exception as e:  # noqa: BLE001 -- one failed point must not end the run
            c = {"model": m.label, "length": int(L), "error": f"{type(e).__name__}: {e}"}
        res["prefill"].append(c)
        log(f"  prefill {m.label} L={L}: " + (f"{c['tokens_per_s']:,.0f} tokens/s "
            f"(batch {c['batch']}, runs {', '.join(f'{t:.2f}' for t in c['times_s'])} s)"
            if "tokens_per_s" in c else c.get("skipped") or c.get("error", "?")))
    variants = getattr(m, "cache_kinds", [None])
    for cache in variants:
        kw = {} if cache is None else {"cache": cache}
        for ctx in p["contexts"]:
            try:
                c = decode_point(m, p["decode_batch"], ctx, p["warm_steps"], p["steps"], rng,
                                 **kw)
            except Exception as e:  # noqa: BLE001
                c = {"model": m.label, "batch": p["decode_batch"], "context": int(ctx),
                     "cache": cache or "state", "error": f"{type(e).__name__}: {e}"}
            res["decode"].append(c)
            log(f"  decode {m.label} [{c.get('cache')}] B={p['decode_batch']} C={ctx}: "
                + (f"{c['tokens_per_s']:,.0f} tokens/s, {c['ms_per_step']:.2f} ms/step"
                   if "tokens_per_s" in c else c["error"]))
        try:
            c = decode_point(m, 1, p["batch1_context"], p["warm_steps"], p["steps"], rng, **kw)
            wb = m.info()["weight_read_bytes"]
            fl = floor_ms(wb, bandwidth)
            c.update(weight_read_bytes=wb, floor_ms=fl, ratio_to_floor=c["ms_per_step"] / fl)
            if c.get("state_bytes"):
                c["floor_with_state_ms"] = floor_ms(wb + c["state_bytes"], bandwidth)
        except Exception as e:  # noqa: BLE001
            c = {"model": m.label, "batch": 1, "context": p["batch1_context"],
                 "cache": cache or "state", "error": f"{type(e).__name__}: {e}"}
        res["batch1"].append(c)
        log(f"  decode {m.label} [{c.get('cache')}] B=1 C={p['batch1_context']}: "
            + (f"{c['ms_per_step']:.2f} ms/token, floor {c['floor_ms']:.2f} ms "
               f"({c['ratio_to_floor']:.2f}x)" if "floor_ms" in c else c["error"]))


def make_model(name: str, p: dict[str, Any]) -> Any:
    if name in HF_NAMES:
        from gpu_model_hf import HFLlama
        return HFLlama(p["hf_shapes"], p["device"], caches=p["hf_caches"], seed=p["seed"])
    return Ours(name, p["device"], p["chunk_size"], seed=p["seed"])


def run(p: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole protocol for the parameters ``p`` (see :func:`params`); writes the outputs
    into ``p["out"]`` (JSON after every model) and returns the result dict."""
    import gpu_model_report as rep

    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "commit": git_commit(), "device": device_name(p["device"]),
                           "versions": versions(), "params": p, "models": {},
                           "prefill": [], "decode": [], "batch1": []}
    t0 = time.perf_counter()
    log(f"{res['date']}  commit {res['commit']}  {res['device']}")
    res["copy"] = measure_copy_bandwidth(p["device"], p["copy_bytes"])
    bw = res["copy"]["bandwidth_Bps"]
    log(f"copy bandwidth {bw / 1e12:.2f} TB/s ({res['copy']['method']})")
    for name in p["models"]:
        label = rep.HF_LABEL if name in HF_NAMES else name
        try:
            m = make_model(name, p)
        except Exception as e:  # noqa: BLE001 -- e.g. transformers missing: the row says so
            res["models"][label] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{label}: not measured: {res['models'][label]['error']}")
            rep.write_json(res, p["out"])
            continue
        res["models"][m.label] = m.info()
        log(f"{m.label}: built in {m.build_s:.1f} s")
        tm = time.perf_counter()
        try:
            run_model(m, p, res, log, bw)
        finally:
            res["models"][m.label]["measure_s"] = time.perf_counter() - tm
            m.close()
            del m
            gc.collect()
        rep.write_json(res, p["out"])
    res["total_s"] = time.perf_counter() - t0
    res["targets"] = rep.targets(res)
    rep.write_all(res, p["out"], log)
    return res


def params(a: argparse.Namespace) -> dict[str, Any]:
    """Run parameters from the parsed command line."""
    def ints(s: Optional[str], default: tuple[int, ...]) -> list[int]:
        if not s:
            return list(default)
        v = [int(x) for x in s.split(",") if x.strip()]
        if not v or min(v) < 1:
            raise SystemExit(f"expected positive integers, got {s!r}")
        return v
    lengths = ints(a.lengths, QUICK_LENGTHS if a.quick else DEFAULT_LENGTHS)
    contexts = ints(a.contexts, QUICK_CONTEXTS if a.quick else DEFAULT_CONTEXTS)
    total = a.total_tokens or (max(lengths) if a.quick else 128 * K)
    models = [m.strip() for m in (a.models or ",".join(DEFAULT_MODELS)).split(",") if m.strip()]
    caches = [c.strip() for c in a.hf_caches.split(",") if c.strip()]
    bad = [c for c in caches if c not in ("dynamic", "static")]
    if bad or not caches:
        raise SystemExit(f"--hf-caches: expected dynamic and/or static, got {a.hf_caches!r}")
    return {"models": models, "lengths": lengths, "contexts": contexts,
            "total_tokens": int(total), "decode_batch": a.decode_batch,
            "batch1_context": a.batch1_context or (1 * K if a.quick else 4 * K),
            "warm_steps": 2 if a.quick else 4, "steps": 4 if a.quick else 12,
            "chunk_size": a.chunk_size, "cap_s": a.cap_s, "cheap_s": CHEAP_S,
            "device": a.device,
            "hf_shapes": a.hf_shapes, "hf_caches": caches, "seed": 0,
            "copy_bytes": (a.copy_mib or (256 if a.quick else 2048)) << 20,
            "out": str(a.out), "quick": bool(a.quick)}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help=f"comma-separated (default {','.join(DEFAULT_MODELS)}); "
                    "preset names, optionally NAME:llama|mistral|mamba, or hf-llama")
    ap.add_argument("--lengths", help="prefill prompt lengths (default 4096,32768,131072)")
    ap.add_argument("--contexts", help="batch-16 decode contexts (default 4096..65536)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: lengths 1K,4K (4K tokens per point), contexts 1K,4K, "
                         "batch-1 context 1K, fewer steps, 256 MiB copy")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="output folder (default benchmarks/results)")
    ap.add_argument("--total-tokens", type=int, help="tokens per prefill point (default 131072)")
    ap.add_argument("--chunk-size", type=int, default=8192, help="samba_ext prefill chunk")
    ap.add_argument("--cap-s", type=float, default=90.0,
                    help="skip a prefill point estimated to take longer (seconds)")
    ap.add_argument("--decode-batch", type=int, default=16)
    ap.add_argument("--batch1-context", type=int, help="context of the batch-1 point (4096)")
    ap.add_argument("--hf-shapes", default="llama3-1.6b",
                    help="samba_ext preset whose shapes the transformers Llama takes")
    ap.add_argument("--hf-caches", default="dynamic,static",
                    help="transformers decode caches to time (dynamic,static)")
    ap.add_argument("--copy-mib", type=int, help="size of the bandwidth copy (2048 MiB)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    return run(params(a))


if __name__ == "__main__":
    main()
