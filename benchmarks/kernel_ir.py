"""Cross-compile the paged decode kernel for sm_90 on a CPU machine and count what matters.

    PYTHONPATH=src python3 benchmarks/kernel_ir.py [--out DIR] KV,PATH,BITS,BLOCK_N,WARPS ...

e.g. ``bf16,dot,0,64,4 fp8,dot_kt,0,64,4 fp8,fma,1,64,4``. Needs only triton (its NVIDIA
backend ships ptxas and cuobjdump), no GPU. Per variant: registers per thread (cuobjdump),
shared memory, programs per SM those allow (an H100/H200 SM: 64k registers, 228 KiB shared),
SASS instruction count, and per-tile PTX counts (fp8 conversions, byte-wise shared loads,
ldmatrix, mma, async copies, shuffles). ``--out`` keeps the TTGIR/PTX/SASS for reading.
Qwen3-0.6B decode shape: 16 query / 8 KV heads, d 128, block 16, 8 splits.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pagedllm.kernels import paged_decode  # noqa: E402

COUNTS = [r"cvt\.rn\.f16x2\.e4m3x2", r"ld\.shared\.b8", r"ldmatrix", r"mma\.sync", r"cp\.async\.cg",
          r"cp\.async\.ca", r"fma\.rn\.f32", r"shfl", r"prmt"]  # fmt: skip


def compile_decode(kv: str, path: str, bits: bool, block_n: int, warps: int):
    """The decode split kernel for sm_90 with the engine's specializations (16-aligned ints)."""
    fn = paged_decode._decode_split_kernel
    fp8 = kv == "fp8"
    ptrs = dict(q_ptr="*bf16", cache_ptr="*fp8e4nv" if fp8 else "*bf16", block_tables_ptr="*i32",
                seq_lens_ptr="*i32", out_ptr="*bf16", part_out_ptr="*fp32", part_m_ptr="*fp32",
                part_l_ptr="*fp32", scale_ptr="*fp32")  # fmt: skip
    fp8_path = paged_decode.FP8_PATHS[path] if fp8 else 0
    consts = dict(NUM_HEADS=16, NUM_GROUP=2, GROUP_PAD=2 if fp8_path == 2 else 16, HEAD_DIM=128,
                  BLOCK_SIZE=16, BLOCK_N=block_n, NUM_SPLITS=8, HAS_WINDOW=False,
                  HAS_SOFTCAP=False, DOT_PRECISION="tf32", DOT_FP32=False, KV_CAST=fp8,
                  HAS_SCALE=fp8, KV_F16=fp8, FP8_PATH=fp8_path, CVT_BITS=bits and fp8)  # fmt: skip
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = ptrs.get(name, "fp32" if name in ("qk_scale", "softcap") else "i32")
        if name not in ("qk_scale", "softcap", "sliding_window", "stride_bt"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=2))  # fmt: skip


def summarize(kernel, label: str, out: Path) -> str:
    """One line: registers, shared memory, programs per SM, SASS size, PTX counts."""
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    cubin = out / f"{label}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    for ext in ("ttgir", "ptx"):
        (out / f"{label}.{ext}").write_text(kernel.asm[ext])
    res = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True).stdout
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
    (out / f"{label}.sass").write_text(sass)
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    smem, warps = kernel.metadata.shared, kernel.metadata.num_warps
    per_sm = min(65536 // ((regs + 7) // 8 * 8 * 32 * warps), 233472 // (smem + 1024), 32)
    counts = {p.replace("\\", ""): len(re.findall(p, kernel.asm["ptx"])) for p in COUNTS}
    counts = {k: v for k, v in counts.items() if v}
    return f"{label:26s} regs {regs:3d} smem {smem:6d} progs/SM {per_sm:2d} sass {sass.count(';'):5d} {counts}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="KV,PATH,BITS,BLOCK_N,WARPS")
    ap.add_argument("--out", default=None, help="keep TTGIR/PTX/SASS here")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print("triton", triton.__version__)
    for spec in args.variants:
        kv, path, bits, block_n, warps = spec.split(",")
        kernel = compile_decode(kv, path, bits == "1", int(block_n), int(warps))
        print(summarize(kernel, f"{kv}_{path}_b{bits}_n{block_n}_w{warps}", out))


if __name__ == "__main__":
    main()
