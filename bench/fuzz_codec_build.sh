#!/usr/bin/env bash
# Build ext/codec.pyx and ext/jsondata.pyx with ASan + UBSan and libFuzzer coverage
# (clang's -fsanitize=fuzzer-no-link) into a directory of their own, for
# bench/fuzz_codec_atheris.py. The installed extensions in server/tensorgate/_ext are
# left alone: the modules are built as `tgasan.codec` and `tgasan.jsondata` (a package
# name of their own, so Cython does not also read src/codec.pxd as the module's
# declarations, which codec.pyx already includes) and the harness puts this directory
# first on sys.path.
#
#   bench/fuzz_codec_build.sh [/tmp/asan-build]      # needs clang (apt-get install clang)
set -euo pipefail
OUT=${1:-/tmp/asan-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
rm -rf "$OUT/src" && mkdir -p "$OUT/src" "$OUT/tgasan" && : > "$OUT/tgasan/__init__.py"
cp "$ROOT"/ext/codec.pyx "$ROOT"/ext/codec.pxd "$ROOT"/ext/jsondata.pyx "$ROOT"/ext/jsondata.pxd "$OUT/src/"
SAN="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
cd "$OUT"
# Compiled with the sanitizers, linked without their runtimes: the runtime is atheris's
# asan_with_fuzzer.so (LD_PRELOAD, which carries UBSan's handlers too), so the extension's
# __asan_*/__ubsan_*/__sanitizer_cov_* references resolve to that one copy at load time.
CC=clang LDSHARED="clang -shared" TG_SAN="$SAN" "$PY" - <<'PYEOF'
import os
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

exts = [Extension(f"tgasan.{name}", sources=[f"src/{name}.pyx"], include_dirs=[numpy.get_include(), "src"],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                  extra_compile_args=os.environ["TG_SAN"].split())
        for name in ("codec", "jsondata")]
# Bounds checks on (as TENSORGATE_DEBUG=1 would) are left off: the release directives are
# the code that runs in the server, and ASan is the bounds check here.
setup(name="tensorgate-asan-ext", ext_modules=cythonize(
          exts, force=True, compiler_directives={"language_level": 3, "boundscheck": False,
                                                 "wraparound": False, "cdivision": True}),
      script_args=["build_ext", "--inplace"])
PYEOF
ls -l "$OUT"/tgasan/*.so
