#!/bin/bash
# Copy every checkpoint a running training writes, before the trainer's rotation deletes it (the shapes
# pretraining keeps only its last 2), so `benchmarks/export_checkpoints.py` and `stablekit eval` can score
# the run over its steps afterwards. Read-only on SRC; a file is copied once it is 20 s old, via a
# temporary name, so DST never holds a torn copy. Stop it with kill PID.
#   benchmarks/snapshot_checkpoints.sh /work/runs/shapes-v2/unet/checkpoints /tmp/v2-ckpts [EVERY]
# EVERY (default 1): keep only steps divisible by it, e.g. 500.
set -u
src=$1; dst=$2; every=${3:-1}
mkdir -p "$dst"
while true; do
  for f in "$src"/step-*.pt; do
    [ -e "$f" ] || continue
    b=$(basename "$f"); n=$(echo "$b" | sed 's/^step-0*//; s/\.pt$//'); n=${n:-0}
    [ $((n % every)) -eq 0 ] || continue
    if [ ! -e "$dst/$b" ] && [ $(( $(date +%s) - $(stat -c %Y "$f") )) -gt 20 ]; then
      cp "$f" "$dst/$b.tmp" && mv "$dst/$b.tmp" "$dst/$b"
    fi
  done
  sleep 60
done
