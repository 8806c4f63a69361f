# From the repository root, with experiment.patch applied and the bench repository
# built (python -c 'from bench.models import build_bench_repository as b; b(...)'):
#   bash bench/results/2026-12-07-prediction-log-c/floor.sh REPO
HERE=bench/results/2026-12-07-prediction-log-c
for rep in 1 2 3 4; do
  for cfg in off full floor; do
    case $cfg in off) e=""; c=off;; full) e=""; c=100%;; floor) e=rawcopy; c=100%;; esac
    echo "### $cfg"; TG_EXP=$e PATH=.venv/bin:$PATH python $HERE/faults.py $1 $c 2>&1 | tail -8
  done
done
