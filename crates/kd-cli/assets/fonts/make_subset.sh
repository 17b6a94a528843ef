#!/usr/bin/env bash
# Regenerates DejaVuSans-subset.ttf, the font `kd` draws chart text with (crates/kd-cli/src/plot.rs).
# DejaVu Sans 2.37 (Debian's fonts-dejavu-core) cut down to Latin-1, Greek, a few dashes,
# quotes, arrows and math signs, without hinting or OpenType layout: about 30 KB instead of 760 KB.
# Needs fonttools (`pip install fonttools`). Licence: LICENSE beside this script.
set -euo pipefail
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
here=$(cd "$(dirname "$0")" && pwd)
pyftsubset "$src" \
  --unicodes="U+0020-007E,U+00A0-00FF,U+0391-03A9,U+03B1-03C9,U+2013-2014,U+2016,U+2018-201F,U+2022,U+2026,U+2032,U+2190-2193,U+2202,U+2207,U+2211,U+2212,U+221A,U+221E,U+2248,U+2260,U+2264,U+2265" \
  --no-hinting --layout-features='' \
  --drop-tables+=MATH,GSUB,GPOS,GDEF,FFTM \
  --name-IDs='*' --name-languages='*' \
  --output-file="$here/DejaVuSans-subset.ttf"
