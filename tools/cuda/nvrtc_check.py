#!/usr/bin/env python3
"""Compile framepack-models/src/cuda/kernels.cu with NVRTC (as the library does at run time) and,
when ptxas is available, assemble it for a target to print registers / spills per kernel.
No GPU needed: this is the offline loop for kernel work.

  python3 tools/cuda/nvrtc_check.py [--arch sm_90a] [--ptxas PATH] [--sass] [--source FILE]

--source checks another copy of kernels.cu (a variant to be measured on the GPU machine with
FRAMEPACK_KERNELS_SOURCE=FILE, without rebuilding).
"""
import argparse, ctypes, glob, os, subprocess, sys, tempfile

def find_nvrtc():
    cands = glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*") + glob.glob(
        os.path.join(sys.prefix, "lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so*"))
    cands += glob.glob("/root/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so*")
    if not cands:
        sys.exit("libnvrtc not found")
    return sorted(cands)[0]

def compile_ptx(src, arch):
    lib = ctypes.CDLL(find_nvrtc())
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"kernels.cu", 0, None, None) == 0
    opts = [f"--gpu-architecture=compute_{arch.split('_')[1]}".encode(), b"--std=c++17", b"-lineinfo"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        print(log.value.decode())
    if rc != 0:
        sys.exit(f"NVRTC failed ({rc})")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--ptxas", default=next(iter(glob.glob("/root/.pyenv/versions/*/lib/python3*/site-packages/triton/backends/nvidia/bin/ptxas")), None))
    ap.add_argument("--sass", action="store_true")
    ap.add_argument("--source", help="the kernel source to check (default: the library's)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = open(args.source or os.path.join(root, "framepack-models/src/cuda/kernels.cu")).read()
    ptx = compile_ptx(src, args.arch)
    print(f"NVRTC ok: {len(ptx)} bytes of PTX")
    if args.ptxas:
        with tempfile.TemporaryDirectory() as d:
            # An older ptxas (e.g. Triton's) rejects newer PTX ISA versions; the kernels use
            # nothing past PTX 8.0, so the version line can be lowered for the offline check.
            import re
            ptx = re.sub(r"^\.version \d+\.\d+", ".version 8.0", ptx, flags=re.M)
            p = os.path.join(d, "k.ptx"); open(p, "w").write(ptx)
            out = subprocess.run([args.ptxas, f"-arch={args.arch}", "-v", "-O3", p, "-o", os.path.join(d, "k.cubin")],
                                 capture_output=True, text=True)
            print(out.stderr.strip() or out.stdout.strip())
            if args.sass:
                cuobj = os.path.join(os.path.dirname(args.ptxas), "cuobjdump")
                print(subprocess.run([cuobj, "--dump-sass", os.path.join(d, "k.cubin")], capture_output=True, text=True).stdout)

if __name__ == "__main__":
    main()
