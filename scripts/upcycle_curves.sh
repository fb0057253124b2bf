#!/usr/bin/env bash
# upcycle_curves.sh OUT.png DENSE.csv SCRATCH_MOE.csv CONTINUED.csv [CONTINUED.csv ...]
# One PNG, two panels, from `vmoe train --log` CSVs: test top-1 against cumulative
# training epochs (left) and against cumulative training minutes as each log measured
# them (right; the `seconds` column, evaluation excluded). DENSE is the dense run the
# CONTINUED runs (`vmoe train --init-from`, e.g. upcycled models) started from, so they
# are drawn from its last epoch and its total minutes on; SCRATCH_MOE starts at 0. The
# logs may come from different machines and loads: only the left panel is
# load-independent. Titles are the file names. Needs gnuplot (gnuplot-nox).
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1 dense=$2 scratch=$3
shift 3
for f in "$dense" "$scratch" "$@"; do [[ -s $f ]] || { echo "upcycle_curves: $f: missing or empty" >&2; exit 1; }; done
command -v gnuplot >/dev/null || { echo "upcycle_curves: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
name() { basename "$1" .csv; }
dense_epochs=$(($(wc -l <"$dense") - 1))
dense_minutes=$(awk -F, 'NR > 1 {s += $8} END {printf "%.3f", s / 60}' "$dense")
style='with linespoints lw 2 ps 0.7'
by_epoch="\"$dense\" every ::1 using 1:(100*\$6) $style pt 7 title \"$(name "$dense")\", \
  \"$scratch\" every ::1 using 1:(100*\$6) $style pt 5 title \"$(name "$scratch") (from scratch)\""
by_time="s0 = 0, \"$dense\" every ::1 using (s0 = s0 + \$8/60, s0):(100*\$6) $style pt 7 title \"$(name "$dense")\", \
  s1 = 0, \"$scratch\" every ::1 using (s1 = s1 + \$8/60, s1):(100*\$6) $style pt 5 title \"$(name "$scratch") (from scratch)\""
i=2
for f in "$@"; do
  pt=$((7 + 2 * i))
  by_epoch+=", \"$f\" every ::1 using (\$1 + $dense_epochs):(100*\$6) $style pt $pt title \"$(name "$f")\""
  by_time+=", s$i = $dense_minutes, \"$f\" every ::1 using (s$i = s$i + \$8/60, s$i):(100*\$6) $style pt $pt title \"$(name "$f")\""
  i=$((i + 1))
done
tmp=$(mktemp "$(dirname "$out")/.upcycle_curves.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gnuplot <<GP
set terminal pngcairo size 1400,560 font "sans,11"
set output "$tmp"
set datafile separator ","
set key bottom right
set grid
set yrange [84:92]
set ylabel "test top-1 (%), 10k Fashion-MNIST test split"
set multiplot layout 1,2 title "Continuing from the dense ViT (epoch $dense_epochs) vs the from-scratch V-MoE: every model costs the same FLOPs per epoch"
set xlabel "cumulative training epochs"
plot $by_epoch
set xlabel "cumulative training minutes, as measured (machines and loads differ: docs/RESULTS.md)"
plot $by_time
unset multiplot
GP
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
