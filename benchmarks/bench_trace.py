"""One embedded-UNet call (batch 2, 16x16 latent, fp32): eager vs traced vs traced+frozen, taking turns.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_trace.py

Prints trace / freeze / save+load times, the first calls of each (TorchScript's profiling executor),
the max difference to eager (0.0: bit-exact) and medians over 6 interleaved rounds.
"""
import io
import os
import statistics
import time
import warnings

import torch

warnings.simplefilter("ignore")
torch.set_num_threads(1)
os.environ["STABLEKIT_TRACE"] = "0"  # the eager UNet; this script traces it itself
import stablekit
pipe = stablekit.load(progress=False, dtype="fp32")
unet = pipe.components.unet
x = torch.randn(2,4,16,16); t = torch.tensor([500.,500.]); ctx = torch.randn(2,77,32)
class W(torch.nn.Module):
    def __init__(s,u): super().__init__(); s.u=u
    def forward(s,x,t,c): return s.u(x,t,encoder_hidden_states=c,return_dict=False)[0]
def T(f):
    t0=time.perf_counter(); f(); return time.perf_counter()-t0
with torch.no_grad():
    ref = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    t0=time.perf_counter(); tr = torch.jit.trace(W(unet).eval(), (x,t,ctx), check_trace=False); print("trace s", time.perf_counter()-t0)
    t0=time.perf_counter(); fr = torch.jit.freeze(torch.jit.trace(W(unet).eval(), (x,t,ctx), check_trace=False)); print("trace+freeze s", time.perf_counter()-t0)
    buf = io.BytesIO(); torch.jit.save(fr, buf); print("saved MB", len(buf.getvalue())/1e6)
    t0=time.perf_counter(); buf.seek(0); fl = torch.jit.load(buf); print("load s", time.perf_counter()-t0)
    fns = {"eager": lambda: unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0], "trace": lambda: tr(x,t,ctx),
           "frozen": lambda: fr(x,t,ctx)}
    def noopt(m):
        def f():
            with torch.jit.optimized_execution(False): return m(x,t,ctx)
        return f
    fns["frozen-noopt"] = noopt(fl)
    for k,f in fns.items():
        print(k, "warm-up calls ms", [round(1000*T(f)) for _ in range(3)], "maxdiff", (f()-ref).abs().max().item())
    times = {k:[] for k in fns}
    for r in range(6):
        for k,f in fns.items(): times[k].append(T(f))
    for k,v in times.items(): print(k, "median ms", round(1000*statistics.median(v)))
