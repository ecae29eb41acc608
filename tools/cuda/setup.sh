# Sourced by the device scripts, from the repository root on the GPU machine: unpacks the
# binaries in .device-bin/ (they travel xz-compressed: the carried tree is limited to 64 MiB),
# enters that folder, prints the card, and points the loader at cuBLASLt / NVRTC (the
# toolkit's and PyTorch's copies, whichever it finds first).
cd .device-bin || exit 1
for f in *.xz; do [ -e "$f" ] || continue; python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3],'wb'))" "$f" && chmod +x "${f%.xz}"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export RUST_BACKTRACE=1
NV=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0] if hasattr(nvidia,"__path__") else nvidia.__file__))' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${NV:+$NV/nvidia/cu13/lib:}${LD_LIBRARY_PATH:-}
