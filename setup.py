"""Build script for samba-ext.

Always builds ``samba_ext._core`` (C99, OpenMP when the compiler supports it).
Builds ``samba_ext._cuda`` (nvcc + cuBLAS) when asked, or when a CUDA toolkit is found *and* an NVIDIA
GPU is visible (compiling the CUDA kernels for five architectures takes about a minute of CPU time, which
a machine without a GPU would spend for nothing). The toolkit is looked for in this order:
``CUDA_HOME`` / ``CUDA_PATH``, then ``nvcc`` on PATH, then ``/usr/local/cuda``.

Environment:
  SAMBA_EXT_CUDA=0   never build CUDA;  =1  build it and fail if it cannot be built;
                     unset: build it when a toolkit and a GPU are found, or when SAMBA_EXT_CUDA_ARCHS is set.
  SAMBA_EXT_CUDA_ARCHS  e.g. "90" or "80;90". Default: the visible GPUs' own architectures (from
                     nvidia-smi), else 75;80;86;89;90; PTX is added for the newest.
  SAMBA_EXT_SANITIZE=1  build _core with -fsanitize=address,undefined (for the CI job).
  SAMBA_EXT_NO_OPENMP=1 build without OpenMP.

Compiled objects are kept in build/obj-<key>/, where the key hashes the compiler, flags and versions, and
an object is recompiled only when its source or a header is newer. So the README's two commands (a plain
install, then an editable install for the tests) compile the kernels once. ``pip install -v`` shows the
build's own lines ("samba-ext build: ...").
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = Path("csrc")

CORE_SOURCES = sorted(str(p) for p in CSRC.glob("*.c")) + sorted(
    str(p) for p in (CSRC / "py").glob("*.c")
)


def log(msg: str) -> None:
    print(f"samba-ext build: {msg}", file=sys.stderr, flush=True)


def compiler_works(args: list[str]) -> bool:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n"
                       "{n=omp_get_num_threads();}\nreturn n>0?0:1;}\n")
        try:
            r = subprocess.run(cc.split() + [str(src), "-o", str(Path(d) / "t")] + args,
                               capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return r.returncode == 0


def compiler_version() -> str:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    try:
        out = subprocess.run(cc.split() + ["--version"], capture_output=True, text=True,
                             timeout=30).stdout
        return out.splitlines()[0].strip() if out else cc
    except (OSError, subprocess.SubprocessError):
        return cc


# ------------------------------------------------------------------------------- CUDA ---
def find_cuda() -> tuple[Path | None, str]:
    """Return (CUDA home, how it was found) or (None, why not)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        v = os.environ.get(var)
        if v:
            if (Path(v) / "bin" / "nvcc").exists():
                return Path(v), f"${var}={v}"
            return None, f"${var}={v} has no bin/nvcc"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return Path(nvcc).resolve().parent.parent, f"nvcc on PATH ({nvcc})"
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda"), "/usr/local/cuda"
    return None, "no CUDA toolkit found (CUDA_HOME/CUDA_PATH unset, no nvcc on PATH, " \
                 "no /usr/local/cuda)"


def nvcc_version(home: Path) -> str | None:
    try:
        out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


DEFAULT_ARCHS = ["75", "80", "86", "89", "90"]


def visible_gpus() -> tuple[bool, list[str]]:
    """(an NVIDIA GPU is visible, their compute capabilities as arch strings like "90")."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            r = None
        if r is not None and r.returncode == 0:
            caps = sorted({c.replace(".", "") for c in r.stdout.split() if re.fullmatch(r"\d+\.\d+", c)})
            if caps:
                return True, caps
    return Path("/dev/nvidia0").exists(), []


def cuda_archs(native: list[str]) -> tuple[list[str], str]:
    """(archs to compile, where the choice came from)."""
    env = os.environ.get("SAMBA_EXT_CUDA_ARCHS")
    if env:
        return [a.strip().replace("sm_", "") for a in re.split(r"[;, ]+", env) if a.strip()], \
            "SAMBA_EXT_CUDA_ARCHS"
    if native:
        return native, "the visible GPUs"
    return DEFAULT_ARCHS, "default"


def cuda_lib_dir(home: Path) -> Path:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (home / sub / "libcublas.so").exists() or (home / sub / "libcudart.so").exists():
            return home / sub
    return home / "lib64"


def plan_cuda() -> dict | None:
    mode = os.environ.get("SAMBA_EXT_CUDA", "").strip()
    if mode == "0":
        log("CUDA: off (SAMBA_EXT_CUDA=0) -> CPU-only build")
        return None
    home, how = find_cuda()
    ver = nvcc_version(home) if home else None
    problem = None
    if home is None:
        problem = how
    elif ver is None:
        problem = f"nvcc at {home} did not report a version"
    elif int(ver.split(".")[0]) < 11:
        problem = f"nvcc {ver} is older than 11.0"
    if problem:
        if mode == "1":
            raise SystemExit(f"samba-ext build: SAMBA_EXT_CUDA=1 but CUDA cannot be built: "
                             f"{problem}")
        log(f"CUDA: skipped ({problem}) -> CPU-only build; set CUDA_HOME or "
            f"SAMBA_EXT_CUDA=1 to require it")
        return None
    gpu, native = visible_gpus()
    asked = mode == "1" or bool(os.environ.get("SAMBA_EXT_CUDA_ARCHS"))
    if not gpu and not asked:
        log(f"CUDA: skipped: nvcc {ver} found but no NVIDIA GPU is visible -> CPU-only build. "
            f"To build the CUDA kernels anyway: SAMBA_EXT_CUDA=1 (sm_{',sm_'.join(DEFAULT_ARCHS)}, "
            f"about a minute) or SAMBA_EXT_CUDA_ARCHS=90 (one architecture)")
        return None
    archs, why = cuda_archs(native)
    log(f"CUDA: building _cuda with nvcc {ver} from {how}, archs sm_{',sm_'.join(archs)} ({why}) "
        f"+ PTX compute_{archs[-1]}, cuBLAS (SAMBA_EXT_CUDA=0 to skip)")
    return {"home": home, "version": ver, "archs": archs, "required": mode == "1"}


BUILD_KEY = ""  # set by make_extensions: a hash of everything that changes the compiled objects


_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)


def local_includes(src: str, root: Path = CSRC) -> list[str] | None:
    """The project headers that ``src`` includes, directly or through other headers (quoted
    includes, looked up next to the including file, then in ``root``), or None when one of them
    is not found: the caller then counts every header as a dependency. Includes inside comments
    or disabled #if blocks count too (at worst a needless rebuild)."""
    todo, seen = [Path(src)], set()
    while todo:
        f = todo.pop()
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for name in _QUOTED_INCLUDE.findall(text):
            for cand in (f.parent / name, root / name):
                if cand.is_file():
                    hdr = cand.resolve()
                    if hdr not in seen:
                        seen.add(hdr)
                        todo.append(hdr)
                    break
            else:
                return None
    return sorted(str(h) for h in seen)


def source_deps(src: str, fallback: list[str]) -> list[str]:
    """``src`` and the headers it includes (``fallback``, every header, where they cannot all be
    found): what its object must be newer than to be reused."""
    deps = local_includes(src)
    return [src, *(fallback if deps is None else deps)]


def up_to_date(target: str, sources: list[str]) -> bool:
    """``target`` exists and is newer than every existing file of ``sources``."""
    try:
        t = os.path.getmtime(target)
    except OSError:
        return False
    return all(os.path.getmtime(f) <= t for f in sources if os.path.exists(f))


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc into objects linked into the _cuda extension, and reuses the
    objects of a previous build with the same flags (build/obj-<key>/) when they are up to date."""

    def finalize_options(self) -> None:
        explicit = self.build_temp is not None
        super().finalize_options()
        self._reuse = not explicit
        if not explicit:  # pip builds in a fresh temporary folder each time: keep objects in the tree
            self.build_temp = str(ROOT / "build" / f"obj-{BUILD_KEY}")

    def build_extensions(self) -> None:
        if self._reuse and not self.force:
            self._skip_up_to_date()
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        cuda = getattr(ext, "_samba_cuda", None)
        if cuda is None:
            return super().build_extension(ext)
        try:
            self._compile_cu(ext, cuda)
            super().build_extension(ext)
        except Exception as e:  # a broken toolkit never breaks the CPU install
            if cuda["required"]:
                raise
            log(f"CUDA: build of _cuda failed ({e}); continuing CPU-only "
                f"(set SAMBA_EXT_CUDA=1 to make this an error)")

    def _skip_up_to_date(self) -> None:
        """Make the compiler skip sources whose object is newer than them and the headers they
        include (source_deps; build_ext's ``depends``, every header, where those cannot be
        found)."""
        orig = self.compiler.compile

        def compile(sources, output_dir=None, *args, **kwargs):
            deps = list(kwargs.get("depends") or [])
            objs = self.compiler.object_filenames(sources, output_dir=output_dir)
            stale = [src for src, obj in zip(sources, objs)
                     if not up_to_date(obj, source_deps(src, deps))]
            if len(stale) < len(sources):
                log(f"{len(sources) - len(stale)} of {len(sources)} C objects are up to date")
            if stale:
                orig(stale, output_dir, *args, **kwargs)
            return objs

        self.compiler.compile = compile

    def _compile_cu(self, ext: Extension, cuda: dict) -> None:
        nvcc = str(cuda["home"] / "bin" / "nvcc")
        objdir = Path(self.build_temp) / "cuda"
        objdir.mkdir(parents=True, exist_ok=True)
        gencode = []
        for a in cuda["archs"]:
            gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
        last = cuda["archs"][-1]
        gencode += [f"-gencode=arch=compute_{last},code=compute_{last}"]
        objs = []
        for src in ext._samba_cu_sources:
            obj = objdir / (Path(src).stem + ".o")
            if self._reuse and not self.force and up_to_date(str(obj), source_deps(src, ext.depends or [])):
                log(f"nvcc {src}: up to date")
                objs.append(str(obj))
                continue
            cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17",
                   "--compiler-options", "-fPIC", "-I", str(CSRC), "-lineinfo",
                   "--expt-relaxed-constexpr",
                   *(sm90a_gencode(cuda["archs"]) if Path(src).name in SM90A_SOURCES else gencode)]
            log("nvcc " + src)
            subprocess.run(cmd, check=True)
            objs.append(str(obj))
        ext.extra_objects = list(ext.extra_objects or []) + objs
        # build_ext relinks only when a source or a dependency is newer than the extension:
        # the objects are dependencies, so a recompiled .cu relinks _cuda
        ext.depends = list(ext.depends or []) + objs


# Sources whose kernels use sm_90a-only instructions (wgmma): for them architecture 90 is
# compiled as sm_90a machine code (and no compute_90 PTX, which would hold only the fallback
# trap), and SAMBA_WGMMA_SM90A tells the launcher that the code is there.
SM90A_SOURCES = {"attention_wgmma.cu", "attention_bwd_wgmma.cu"}


def sm90a_gencode(archs: list[str]) -> list[str]:
    """nvcc flags for SM90A_SOURCES: 90 (or 90a) as sm_90a; "90a" in SAMBA_EXT_CUDA_ARCHS
    names the same code, so it defines SAMBA_WGMMA_SM90A too."""
    out: list[str] = []
    for a in archs:
        flags = (["-gencode=arch=compute_90a,code=sm_90a", "-DSAMBA_WGMMA_SM90A=1"]
                 if a in ("90", "90a") else [f"-gencode=arch=compute_{a},code=sm_{a}"])
        out += [f for f in flags if f not in out]
    if archs[-1] not in ("90", "90a"):
        out += [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return out


def make_extensions() -> list[Extension]:
    cflags = ["-std=c99", "-O3", "-Wall", "-Wno-unused-function"]
    ldflags: list[str] = []
    if os.environ.get("SAMBA_EXT_SANITIZE") == "1":
        cflags = ["-std=c99", "-O1", "-g", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        ldflags = ["-fsanitize=address,undefined"]
        log("sanitizers: -fsanitize=address,undefined")
    omp = os.environ.get("SAMBA_EXT_NO_OPENMP") != "1" and compiler_works(["-fopenmp"])
    if omp:
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    log(f"CPU: {compiler_version()}, OpenMP {'on' if omp else 'off'}")
    macros = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION"),
        ("SAMBA_COMPILER", '"' + compiler_version().replace('"', "'") + '"'),
        ("NUMPY_VERSION_STRING", '"' + np.__version__ + '"'),
    ]
    # headers (and, for _cuda, the .cu files nvcc compiles into extra_objects) as depends, so that
    # an in-place rebuild relinks when only they changed
    headers = sorted(str(p) for p in CSRC.rglob("*.h")) + sorted(str(p) for p in CSRC.rglob("*.cuh"))
    core = Extension("samba_ext._core", sources=CORE_SOURCES, depends=headers,
                     include_dirs=[np.get_include(), str(CSRC)], define_macros=macros,
                     extra_compile_args=cflags, extra_link_args=ldflags)
    exts = [core]
    cuda = plan_cuda()
    global BUILD_KEY
    key = repr((sys.implementation.cache_tag, sysconfig.get_platform(), compiler_version(), cflags, ldflags,
                macros, None if cuda is None else (cuda["version"], cuda["archs"], str(cuda["home"]))))
    BUILD_KEY = hashlib.sha256(key.encode()).hexdigest()[:12]
    if cuda is not None:
        lib = cuda_lib_dir(cuda["home"])
        cu_macros = macros + [
            ("SAMBA_NVCC_VERSION", '"' + cuda["version"] + '"'),
            ("SAMBA_CUDA_ARCHS", '"' + ";".join(cuda["archs"]) + '"'),
        ]
        ext = Extension(
            "samba_ext._cuda",
            sources=sorted(str(p) for p in (CSRC / "cuda").glob("*.c")),
            include_dirs=[np.get_include(), str(CSRC), str(cuda["home"] / "include")],
            define_macros=cu_macros,
            library_dirs=[str(lib)],
            runtime_library_dirs=[str(lib)],
            libraries=["cublasLt", "cublas", "cudart", "stdc++"],
            extra_compile_args=["-std=c99", "-O2", "-Wall"],
            depends=headers + sorted(str(p) for p in (CSRC / "cuda").glob("*.cu")),
        )
        ext._samba_cuda = cuda
        ext._samba_cu_sources = sorted(str(p) for p in (CSRC / "cuda").glob("*.cu"))
        exts.append(ext)
    return exts


# ------------------------------------------------------------------ lm-eval start-up hook ---
HOOK_SRC = ROOT / "samba_ext" / "integrations" / "lmeval_hook.py"
HOOK_TOP = "_samba_ext_lm_eval_hook.py"        # the hook module's name in site-packages


def _hook_constant(name: str) -> str:
    """A string constant of lmeval_hook.py (PTH_NAME, PTH_LINE), read without importing it."""
    for node in ast.parse(HOOK_SRC.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{HOOK_SRC}: no constant {name}")


class BuildPy(build_py):
    """Also puts the lm-eval start-up hook (a .pth file, written from lmeval_hook.PTH_LINE, and
    a copy of the module it imports) at the top of site-packages: into the build root, so
    wheels and ``pip install .`` carry it, and for an editable install (``pip install -e``,
    whose wheel holds no build root) straight into the editable wheel."""

    def run(self) -> None:
        super().run()
        dest = self.build_lib
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel points install_lib at the wheel it is assembling
            dest = self.get_finalized_command("install").install_lib
        self.mkpath(dest)
        self.copy_file(str(HOOK_SRC), os.path.join(dest, HOOK_TOP), preserve_mode=False)
        with open(os.path.join(dest, _hook_constant("PTH_NAME")), "w", encoding="utf-8") as f:
            f.write(_hook_constant("PTH_LINE") + "\n")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        if getattr(self, "editable_mode", False):     # outputs under build_lib only
            return super().get_outputs(include_bytecode)
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, name) for name in (HOOK_TOP, _hook_constant("PTH_NAME"))]


setup(ext_modules=make_extensions(), cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
