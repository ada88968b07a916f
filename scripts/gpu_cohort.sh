# Sourced by the GPU scripts: the synthetic cohort (285 cases of `dsmil cohort --seed 1` by default; CASES=N
# for a smaller one, COHORT_SEED=S for another seed) in cohort/brats_like_<N>[_seed<S>], written once per
# machine; sets `cohort` to its folder and defines preprocess_cohort.
cases=${CASES:-285}
cohort_seed=${COHORT_SEED:-1}
cohort=cohort/brats_like_$cases
[ "$cohort_seed" = 1 ] || cohort=${cohort}_seed$cohort_seed
if [ ! -f "$cohort/truth.csv" ]; then
  cohort_start=$(date +%s)
  "$carry/dsmil" cohort --out "$cohort" --cases "$cases" --seed "$cohort_seed" --threads "$(nproc)" > /dev/null
  echo "cohort: $cases cases of seed $cohort_seed written in $(( $(date +%s) - cohort_start )) s"
fi

# preprocess_cohort TOML [ARGS...]: $cohort into cohort/cache at the grid of TOML (a file of configs/ or a run's
# config.toml; 128^3 where it names none), with every core (fold processes of a CV would each use their share);
# ARGS go to `dsmil preprocess` (--index FILE: the cache's index, which the PyTorch twin reads).
preprocess_cohort() {
  local toml=$1 grid
  shift
  grid=$(sed -n "s/^grid = [\"']\(.*\)[\"']$/\1/p" "$toml")
  "$carry/dsmil" preprocess --data "$cohort" --cache cohort/cache --grid "${grid:-128,128,128}" --threads "$(nproc)" \
    "$@" | tail -1
}
