# Sourced by the GPU scripts: the synthetic cohort (285 cases of `dsmil cohort --seed 1` by default; CASES=N
# for a smaller one, COHORT_SEED=S for another seed) in cohort/brats_like_<N>[_seed<S>], written once per
# machine; sets `cohort` to its folder.
cases=${CASES:-285}
cohort_seed=${COHORT_SEED:-1}
cohort=cohort/brats_like_$cases
[ "$cohort_seed" = 1 ] || cohort=${cohort}_seed$cohort_seed
if [ ! -f "$cohort/truth.csv" ]; then
  cohort_start=$(date +%s)
  "$carry/dsmil" cohort --out "$cohort" --cases "$cases" --seed "$cohort_seed" --threads "$(nproc)" > /dev/null
  echo "cohort: $cases cases of seed $cohort_seed written in $(( $(date +%s) - cohort_start )) s"
fi
