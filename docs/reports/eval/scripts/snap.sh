#!/bin/bash
# copy each new pretraining UNet checkpoint (the run keeps only the last 2); read-only on the source
while true; do
  for f in /work/runs/shapes-v2/unet/checkpoints/step-*.pt; do
    b=$(basename $f)
    if [ ! -e /tmp/evaltune/v2ckpt/$b ]; then
      # only copy a file that is at least 20 s old (the writer renames it into place atomically anyway)
      if [ $(( $(date +%s) - $(stat -c %Y $f) )) -gt 20 ]; then cp $f /tmp/evaltune/v2ckpt/$b.tmp && mv /tmp/evaltune/v2ckpt/$b.tmp /tmp/evaltune/v2ckpt/$b; fi
    fi
  done
  sleep 60
done
