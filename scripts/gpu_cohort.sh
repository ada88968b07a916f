# Sourced by the GPU scripts: the default cohort (285 synthetic cases, `dsmil cohort --seed 1`; CASES=N for
# a smaller one) in cohort/brats_like_<N>, written once per machine; sets `cohort` to its folder.
cases=${CASES:-285}
cohort=cohort/brats_like_$cases
if [ ! -f "$cohort/truth.csv" ]; then
  cohort_start=$(date +%s)
  "$carry/dsmil" cohort --out "$cohort" --cases "$cases" --seed 1 --threads "$(nproc)" > /dev/null
  echo "cohort: $cases cases written in $(( $(date +%s) - cohort_start )) s"
fi
