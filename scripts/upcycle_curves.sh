#!/usr/bin/env bash
# upcycle_curves.sh OUT.png DENSE.csv SCRATCH_MOE.csv UPCYCLED.csv [DENSE_CONTINUED.csv]
# One PNG, two panels, from `vmoe train --log` CSVs: test top-1 against cumulative training
# epochs (left; the runs continued from the dense model start at the dense run's last
# epoch) and against cumulative training minutes as each log measured them (right; the
# `seconds` column, evaluation excluded; the logs may come from different machines and
# loads, so only the left panel is load-independent). Needs gnuplot (gnuplot-nox).
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
out=$1 dense=$2 scratch=$3 up=$4 cont=${5:-}
for f in "$dense" "$scratch" "$up" ${cont:+"$cont"}; do [[ -s $f ]] || { echo "upcycle_curves: $f: missing or empty" >&2; exit 1; }; done
command -v gnuplot >/dev/null || { echo "upcycle_curves: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
dense_epochs=$(($(wc -l <"$dense") - 1))
dense_minutes=$(awk -F, 'NR > 1 {s += $8} END {printf "%.3f", s / 60}' "$dense")
tmp=$(mktemp "$(dirname "$out")/.upcycle_curves.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gnuplot <<GP
set terminal pngcairo size 1400,560 font "sans,11"
set output "$tmp"
set datafile separator ","
set key bottom right
set grid
set yrange [86:92.5]
set ylabel "test top-1 (%), 10k Fashion-MNIST test split"
set multiplot layout 1,2 title "Sparse upcycling of the dense ViT vs the from-scratch V-MoE (equal FLOPs per epoch)"
set xlabel "cumulative training epochs (compute: 0.072 GFLOPs/image forward for all models)"
plot "$dense" every ::1 using 1:(100*\$6) with linespoints lw 2 pt 7 ps 0.6 title "dense ViT (vit-fmnist)", \
     "$scratch" every ::1 using 1:(100*\$6) with linespoints lw 2 pt 5 ps 0.6 title "V-MoE from scratch (vmoe-fmnist)", \
     "$up" every ::1 using (\$1 + $dense_epochs):(100*\$6) with linespoints lw 2 pt 9 ps 0.9 title "upcycled from dense epoch $dense_epochs"${cont:+, \\
     \"$cont\" every ::1 using (\\\$1 + $dense_epochs):(100*\\\$6) with linespoints lw 2 pt 11 ps 0.9 title \"dense continued (same recipe)\"}
set xlabel "cumulative training minutes, as measured (different machines and loads: see docs/RESULTS.md)"
s = 0; t = 0; u = $dense_minutes; v = $dense_minutes
plot "$dense" every ::1 using (s = s + \$8/60, s):(100*\$6) with linespoints lw 2 pt 7 ps 0.6 title "dense ViT", \
     "$scratch" every ::1 using (t = t + \$8/60, t):(100*\$6) with linespoints lw 2 pt 5 ps 0.6 title "V-MoE from scratch", \
     "$up" every ::1 using (u = u + \$8/60, u):(100*\$6) with linespoints lw 2 pt 9 ps 0.9 title "upcycled"${cont:+, \\
     \"$cont\" every ::1 using (v = v + \\\$8/60, v):(100*\\\$6) with linespoints lw 2 pt 11 ps 0.9 title \"dense continued\"}
unset multiplot
GP
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
