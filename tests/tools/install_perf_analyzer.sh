#!/usr/bin/env bash
# Installs Triton's perf_analyzer (CPU build) into .tools/ for the smoke load test.
#
# The perf-analyzer package on PyPI is an empty placeholder; a working binary ships
# inside the tritonclient 2.41.0 wheel (later releases dropped it). We take only that
# binary from the wheel, so the test environment keeps tritonclient 2.73 (protobuf 6)
# as its Python client. The binary needs Debian's libb64-0d and libcudart.so.12 even on
# the CPU; the latter comes from PyPI's nvidia-cuda-runtime-cu12, unpacked beside it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/.tools"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
mkdir -p "$tools/lib" "$tools/dl"

if [ -x "$tools/perf_analyzer" ] && [ -e "$tools/lib/libcudart.so.12" ] && ldconfig -p | grep -q libb64.so.0d; then
    echo "perf_analyzer already installed in $tools"
    exit 0
fi

if ! ldconfig -p | grep -q libb64.so.0d; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q libb64-0d >/dev/null 2>&1 || {
            apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null
        }
    else
        echo "install_perf_analyzer: needs Debian's libb64-0d (run as root or apt-get install it)" >&2
        exit 1
    fi
fi

"$python" -m pip download -q --no-deps "tritonclient==2.41.0" -d "$tools/dl"
"$python" -m pip download -q --no-deps "nvidia-cuda-runtime-cu12==12.9.79" -d "$tools/dl"
"$python" - "$tools" <<'PY'
import glob, os, shutil, sys, zipfile
tools = sys.argv[1]
wheel = glob.glob(os.path.join(tools, "dl", "tritonclient-2.41.0-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
    with z.open(member) as src, open(os.path.join(tools, "perf_analyzer"), "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(os.path.join(tools, "perf_analyzer"), 0o755)
wheel = glob.glob(os.path.join(tools, "dl", "nvidia_cuda_runtime_cu12-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/libcudart.so.12"))
    with z.open(member) as src, open(os.path.join(tools, "lib", "libcudart.so.12"), "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
rm -rf "$tools/dl"
LD_LIBRARY_PATH="$tools/lib" "$tools/perf_analyzer" --help >/dev/null 2>&1 || true
if LD_LIBRARY_PATH="$tools/lib" ldd "$tools/perf_analyzer" | grep -q "not found"; then
    echo "install_perf_analyzer: unresolved libraries:" >&2
    LD_LIBRARY_PATH="$tools/lib" ldd "$tools/perf_analyzer" | grep "not found" >&2
    exit 1
fi
echo "perf_analyzer installed in $tools"
