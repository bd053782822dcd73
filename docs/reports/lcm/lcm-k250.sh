#!/bin/sh
# LCM-LoRA on embedded model 3 (speed4, session 8): DDIM solver 4 steps (skip k = 250), teacher CFG 2-6,
# lr 5e-4. Resumable: rerun the same command (raise STEPS to continue).
STEPS=${STEPS:-50}
cd /work/wt/speed4 && exec nice -n 10 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src /work/main/.venv/bin/stablekit train lcm \
  --data /work/runs/speed3/lcm-data --out /work/runs/speed4/lcm-k250 --name lcm-k250 \
  --steps $STEPS --batch-size 16 --lr 5e-4 --warmup-steps 10 --ddim-steps 4 --cfg-min 2 --cfg-max 6 \
  --checkpoint-every 10 --keep-checkpoints 2 --log-every 5 \
  --sample-every 25 --sample-prompts "a red circle on a blue background" "a green star" \
  "a yellow square on a black background" "a small white triangle at the top" \
  --threads 1 --device cpu --no-tensorboard --seed 0
