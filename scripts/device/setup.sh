# Sourced by the device scripts as `. .dev/setup.sh LOG BINARY...`: logs to $OUT/logs/LOG (and
# stdout), the Vulkan/GL loaders from .gl/ on the GPU machine (its image lacks them), the NVIDIA
# ICD, and each BINARY unpacked from .dev/BINARY.xz into $W.
LOG=$1
shift
L=$OUT/logs
mkdir -p "$L" "$W"
exec > >(tee "$L/$LOG") 2>&1
if command -v nvidia-smi >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
unxz_to() { # xz, or Python's lzma where the machine has no xz
    if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
    fi
}
for b in "$@"; do unxz_to ".dev/$b.xz" "$W/$b" && chmod +x "$W/$b"; done
