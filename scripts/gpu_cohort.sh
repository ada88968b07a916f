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

# config_value TOML KEY: KEY's value in TOML (a file of configs/ or a run's config.toml), quotes removed; empty where
# TOML has no such line.
config_value() {
  sed -n "s/^$2 = [\"']\{0,1\}\([^\"']*\)[\"']\{0,1\}$/\1/p" "$1" | head -1
}

# bench_shape TOML: `dsmil bench`'s shape flags for TOML's training step (bags a step, slabs a bag, slab depth, the
# grid's height and width, the model's width and depth), as words.
bench_shape() {
  local grid
  grid=$(config_value "$1" grid)
  echo --bags "$(config_value "$1" bags_per_step)" --instances "$(config_value "$1" instances)" \
    --slab "$(config_value "$1" slab_depth)" --size "$(echo "${grid:-128,128,128}" | cut -d, -f2)" \
    --width "$(config_value "$1" width)" --depth "$(config_value "$1" depth)"
}

# preprocess_cohort TOML [ARGS...]: $cohort into cohort/cache at the grid of TOML (128^3 where it names none), with
# every core (fold processes of a CV would each use their share); ARGS go to `dsmil preprocess` (--index FILE: the
# cache's index, which the PyTorch twin reads).
preprocess_cohort() {
  local toml=$1 grid
  shift
  grid=$(config_value "$toml" grid)
  "$carry/dsmil" preprocess --data "$cohort" --cache cohort/cache --grid "${grid:-128,128,128}" --threads "$(nproc)" \
    "$@" | tail -1
}
