#!/bin/bash
# Accuracy against capacity: `vmoe eval` at each capacity factor, BPR and vanilla routing.
#
#   scripts/sweep_capacity.sh MODEL [--data SPEC] [--factors "0.05 0.1 ..."] [--out DIR]
#                             [--limit N] [--routings "bpr vanilla"] [--batch B]
#                             [--group-images G] [--no-plot] [-- EXTRA VMOE EVAL ARGS]
#
# Writes DIR/sweep.csv (the csv rows of every run under one header: routing,
# capacity_factor, effective_capacity_factor, top1, top5, dropped, choices_dropped, processed_tokens, images_per_s,
# ...), DIR/sweep.png (top-1 against capacity factor and against the fraction of tokens
# an expert processed, one line per routing) and DIR/sweep.gp, the gnuplot script that
# drew it. Models whose router has no routing order (experts-choice) run once per factor;
# Soft-MoE and dense models have no capacity and run once.
# vmoe is taken from $VMOE, else PATH, else build/ next to this script.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "sweep_capacity: $*" >&2; exit 1; }

[[ $# -ge 1 && $1 != -* ]] || usage
MODEL=$1; shift
DATA=fashion-mnist:test
FACTORS="0.05 0.1 0.2 0.3 0.5 0.75 1.0 1.25 1.5 2.0"
OUT=sweep-out
ROUTINGS="bpr vanilla"
PLOT=1
COMMON=()
LIMIT=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=${2:?--data needs a value}; shift 2 ;;
    --factors) FACTORS=${2:?--factors needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    --routings) ROUTINGS=${2:?--routings needs a value}; shift 2 ;;
    --limit) LIMIT=(--limit "${2:?--limit needs a value}"); shift 2 ;;
    --batch|--group-images|--data-dir|--threads) COMMON+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --no-plot) PLOT=0; shift ;;
    --) shift; COMMON+=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "sweep_capacity: unknown option $1" >&2; usage ;;
  esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n ${VMOE:-} ]]; then :
elif command -v vmoe >/dev/null 2>&1; then VMOE=$(command -v vmoe)
elif [[ -x $HERE/../build/vmoe ]]; then VMOE=$HERE/../build/vmoe
else die "no vmoe binary: put it on PATH, build it into build/, or set VMOE=/path/to/vmoe"; fi
[[ -f $MODEL ]] || die "$MODEL: no such model file"
for f in $FACTORS; do [[ $f =~ ^[0-9]*\.?[0-9]+$ ]] || die "--factors: \"$f\" is not a positive number"; done
if [[ $PLOT -eq 1 ]] && ! command -v gnuplot >/dev/null 2>&1; then
  die "gnuplot not found (Debian: apt-get install gnuplot-nox), or pass --no-plot"
fi

mkdir -p "$OUT"
CSV=$OUT/sweep.csv
TMP=$(mktemp "$OUT/.sweep.XXXXXX")
trap 'rm -f "$TMP" "$TMP".*' EXIT

# One run; appends its row (and the header on the first run) to $TMP.
run() {
  local label=$1; shift
  echo "sweep_capacity: $label" >&2
  "$VMOE" eval -m "$MODEL" --data "$DATA" --format csv "${COMMON[@]}" "${LIMIT[@]}" "$@" > "$TMP.one" ||
    die "vmoe eval failed ($label)"
  if [[ ! -s $TMP ]]; then cat "$TMP.one" > "$TMP"; else tail -n +2 "$TMP.one" >> "$TMP"; fi
}

# Which router? The routing column of one cheap run says so.
"$VMOE" eval -m "$MODEL" --data "$DATA" --format csv --limit 1 "${COMMON[@]}" > "$TMP.probe" ||
  die "vmoe eval failed on $MODEL with --data $DATA"
routing_col=$(head -1 "$TMP.probe" | tr ',' '\n' | grep -nx routing | cut -d: -f1)
ROUTER=$(tail -n +2 "$TMP.probe" | cut -d, -f"$routing_col")
case $ROUTER in
  bpr|vanilla)
    for r in $ROUTINGS; do for f in $FACTORS; do run "routing $r, capacity factor $f" --routing "$r" --capacity-factor "$f"; done; done ;;
  experts_choice)
    for f in $FACTORS; do run "experts-choice, capacity factor $f" --capacity-factor "$f"; done ;;
  *)
    run "$ROUTER routing (no capacity factor)" ;;
esac
mv "$TMP" "$CSV"
echo "sweep_capacity: wrote $CSV" >&2
[[ $PLOT -eq 1 ]] || exit 0

# One whitespace-separated data file per routing: capacity_factor top1(%) processed(%).
col() { head -1 "$CSV" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
c_r=$(col routing); c_f=$(col capacity_factor); c_t=$(col top1); c_p=$(col processed_tokens)
PLOTS_F=() PLOTS_P=()
H=$(head -1 "$CSV" | awk -F, '{print NF}')
for r in $(tail -n +2 "$CSV" | awk -F, -v h="$H" -v c="$c_r" '{print $(c + NF - h)}' | awk '!seen[$0]++'); do
  dat=$OUT/sweep_$r.dat
  # Only model and data (the first two columns) may hold commas: index the others from the end.
  tail -n +2 "$CSV" | awk -F, -v h="$H" -v r="$r" \
      -v cr="$c_r" -v cf="$c_f" -v ct="$c_t" -v cp="$c_p" \
    '{ o = NF - h } $(cr + o) == r { f = $(cf + o); if (f == "") f = 1; print f, 100 * $(ct + o), 100 * $(cp + o) }' |
    sort -g > "$dat"
  PLOTS_F+=("'$dat' using 1:2 with linespoints lw 2 pt 7 title '$r'")
  PLOTS_P+=("'$dat' using 3:2 with linespoints lw 2 pt 7 title '$r'")
done
join_by() { local IFS=,; echo "$*"; }
title="$(basename "$MODEL") on $DATA"
cat > "$OUT/sweep.gp" <<GP
set terminal pngcairo size 1400,560 font "sans,11"
set output '$OUT/sweep.png'
set multiplot layout 1,2 title "$title: top-1 accuracy against expert capacity"
set grid
set key bottom right box
set autoscale xfix
set offsets graph 0.04, graph 0.04, graph 0.08, graph 0.08
set ylabel "top-1 accuracy (%)"
set xlabel "capacity factor (log scale)"
set logscale x
plot $(join_by "${PLOTS_F[@]}")
unset logscale x
set xlabel "tokens processed by at least one expert (%, mean over MoE layers)"
plot $(join_by "${PLOTS_P[@]}")
unset multiplot
GP
gnuplot "$OUT/sweep.gp" || die "gnuplot failed on $OUT/sweep.gp"
echo "sweep_capacity: wrote $OUT/sweep.png" >&2
