"""Can the embedded model's autoencoder carry what each teaching method must teach?

Encodes (posterior mean) and decodes the training data of teach_targets.py (run those first: they
render it under runs/teach/data) and lets the shapes judge read the renders and the round trips.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_vae_roundtrip.py
"""
import torch, numpy as np, glob, stablekit
torch.set_num_threads(1)
from PIL import Image
from stablekit.formats import load_model
from stablekit.shapes.judge import Judge
c = load_model(stablekit.EMBEDDED_MODEL, dtype=torch.float32)
j = Judge.load()
for name, pattern, key, want in [("teal diamonds (DreamBooth)", "runs/teach/data/teal-diamond-5/*.png", "color", "teal"),
                                  ("teal diamonds (DreamBooth)", "runs/teach/data/teal-diamond-5/*.png", "shape", "diamond"),
                                  ("large hexagons (TI)", "runs/teach/data/hexagon-5-large/*.png", "shape", "hexagon"),
                                  ("hexagons (fine-tune, first 40)", "runs/teach/data/hexagon-240-base-240/0000*.png", "shape", "hexagon"),
                                  ("outline (LoRA, first 40)", "runs/teach/data/outline-64/00*.png", "hollow", True)]:
    paths = sorted(glob.glob(pattern))[:40]
    ims = [Image.open(p).convert("RGB") for p in paths]
    x = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in ims])).permute(0,3,1,2)/127.5-1
    with torch.no_grad():
        y = c.vae.decode(c.vae.encode(x).latent_dist.mean).sample.clamp(-1,1)
    rec = [Image.fromarray(((t.permute(1,2,0).numpy()+1)*127.5).round().astype(np.uint8)) for t in y]
    a = np.mean([v.get(key) == want for v in j(ims)]); b = np.mean([v.get(key) == want for v in j(rec)])
    print(f"{name}: {key} == {want}: renders {a:.2f}, VAE round trip {b:.2f} (n {len(ims)})")
