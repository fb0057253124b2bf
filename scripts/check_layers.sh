#!/usr/bin/env bash
# The layer check (docs/ARCHITECTURE.md): every folder of lib/ and apps/ may include only
# from itself and the folders below it. The order is read from the ```layers block of
# docs/ARCHITECTURE.md, the one place it is written, bottom first. Prints every upward
# include as FILE:LINE: FOLDER includes "HEADER" from TARGET, a higher layer, and every
# folder that is not a layer, and exits 1; exits 0 when there is none.
# usage: scripts/check_layers.sh [ROOT]   (ROOT defaults to the repository)
set -euo pipefail
root=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
doc="$root/docs/ARCHITECTURE.md"
[[ -f $doc ]] || { echo "check_layers: $doc not found" >&2; exit 2; }
cd "$root"

# The ```layers block: one folder per line, bottom first ("lib/core", ..., "apps/vmoe").
layers=$(awk '/^```layers/{on=1; next} /^```/{on=0} on && NF {print $1}' docs/ARCHITECTURE.md)
[[ -n $layers ]] || { echo "check_layers: no \`\`\`layers block in $doc" >&2; exit 2; }

# Every source file's folder, and every quoted include with a folder ("moe/router.hpp"),
# as FILE:LINE:HEADER; apps include their own files without a folder.
{
  find lib apps -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' \) | sed 's/^/F /'
  grep -rnoE --include='*.cpp' --include='*.hpp' --include='*.h' '^[[:space:]]*#[[:space:]]*include[[:space:]]+"[^"/]+/[^"]+"' lib apps |
    sed -E 's/^([^:]+):([0-9]+):.*"([^"]+)"$/I \1 \2 \3/'
} | awk -v layers="$layers" '
  BEGIN { n = split(layers, order, "\n"); for (i = 1; i <= n; ++i) rank[order[i]] = i }
  function folder(path,   parts) { split(path, parts, "/"); return parts[1] "/" parts[2] }
  $1 == "F" { f = folder($2); if (!(f in rank) && !(f in seen)) { print f ": folder is not in the layers of docs/ARCHITECTURE.md"; bad = 1; seen[f] = 1 } next }
  {
    f = folder($2); split($4, h, "/"); t = "lib/" h[1]
    if (!(f in rank)) next  # reported above
    if (!(t in rank)) { print $2 ":" $3 ": includes \"" $4 "\" from " t ", which is not a layer"; bad = 1 }
    else if (rank[t] > rank[f]) { print $2 ":" $3 ": " f " includes \"" $4 "\" from " t ", a higher layer"; bad = 1 }
  }
  END { exit bad }'
