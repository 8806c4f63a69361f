#!/usr/bin/env bash
# Run the codec's atheris harness on the ASan/UBSan build for SECONDS (default 1800).
#
#   bench/fuzz_codec_run.sh [SECONDS] [BUILD_DIR] [CORPUS_DIR]
#   nohup nice -n 10 bench/fuzz_codec_run.sh 1800 > /tmp/atheris-codec.log 2>&1 &
#
# Builds BUILD_DIR first when it has no build (bench/fuzz_codec_build.sh). Crashes are
# written to $CORPUS_DIR.artifacts/; libFuzzer's final stats (exec/s, coverage) end the log.
set -euo pipefail
SECONDS_TO_RUN=${1:-1800}
BUILD=${2:-/tmp/asan-build}
CORPUS=${3:-/tmp/codec-corpus}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -e "$BUILD/tgasan/__init__.py" ] || "$ROOT/bench/fuzz_codec_build.sh" "$BUILD"
mkdir -p "$CORPUS" "$CORPUS.artifacts"
ASAN_SO=$("$PY" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')
# detect_leaks=0: CPython's own allocations would be reported at exit.
# allocator_may_return_null=1: a huge numpy allocation is a MemoryError, not an abort.
# halt_on_error=1 with -fno-sanitize-recover=undefined: any ASan/UBSan report stops the run.
export LD_PRELOAD=$ASAN_SO
export ASAN_OPTIONS=detect_leaks=0,allocator_may_return_null=1,halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1,halt_on_error=1
echo "atheris codec run: ${SECONDS_TO_RUN}s, build $BUILD, corpus $CORPUS, start $(date -u +%FT%TZ)"
exec "$PY" "$ROOT/bench/fuzz_codec_atheris.py" --build-dir "$BUILD" \
    -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 -rss_limit_mb=4096 \
    -artifact_prefix="$CORPUS.artifacts/" "$CORPUS"
