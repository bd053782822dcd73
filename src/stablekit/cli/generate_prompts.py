"""`stablekit generate --prompts FILE [--out DIR]`: one image set per line, split across processes.

The file format, seeds and names are generate/prompt_file.py's. Under `accelerate launch
--num_processes N -m stablekit generate --prompts FILE ...` each process renders its share of the
lines; alone, one process renders them all, with the same seeds and file names.
"""
from __future__ import annotations

import os

from stablekit.errors import StablekitError

# generate() settings a command-line flag can give for every line (flag attribute -> setting)
COMMON = {"negative": "negative_prompt", "steps": "steps", "cfg": "cfg", "sampler": "sampler", "schedule": "schedule",
          "width": "width", "height": "height", "batch_size": "batch_size", "batch_count": "batch_count",
          "clip_skip": "clip_skip", "deepcache": "deepcache",
          "tome": "tome", "tiny_vae": "tiny_vae"}


def _processes():
    """(rank, world, barrier) of this run: accelerate's when launched by it, else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=True) if os.environ.get("ACCELERATE_USE_CPU") else PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


def run_prompts(args) -> int:
    import stablekit
    from stablekit.generate.params import GenerationParams
    from stablekit.generate.prompt_file import file_seed, image_name, my_share, plan_jobs, read_prompt_file
    from stablekit.metadata.files import save_image
    from stablekit.metadata.outputs import FORMATS, next_number, plan_outputs

    if args.prompt is not None or args.from_png or args.init_image:
        raise StablekitError("--prompts FILE takes its prompts from the file: leave out the prompt argument, "
                             "--from-png and --init-image")
    plan = plan_outputs(args.out if args.out is None or args.out.endswith("/") else args.out + "/", args.format)
    allowed = tuple(f for f in GenerationParams.__dataclass_fields__ if f not in ("prompt", "denoising_strength"))
    entries = read_prompt_file(args.prompts, allowed + ("deepcache", "tome", "tiny_vae"))
    common = {setting: getattr(args, flag) for flag, setting in COMMON.items() if getattr(args, flag) is not None}
    base = args.seed if args.seed not in (None, -1) else file_seed(args.prompts)
    jobs = plan_jobs(entries, common, base)
    rank, world, barrier = _processes()
    start = next_number(plan.path) if plan.path.is_dir() else 0
    plan.path.mkdir(parents=True, exist_ok=True)

    def load():
        return stablekit.load(args.model, device=args.device, dtype=args.dtype, arch=args.arch,
                              allow_pickle=args.allow_pickle, progress=not args.no_progress, compile=args.compile,
                              backend=getattr(args, "backend", "torch"))

    # Process 0 loads first, so its measured dtype/layout verdict (generate/acceleration.py, cached per
    # machine) is the one every process reads: processes probing at once under load could disagree and
    # compute the same image in different precisions. The barrier also fixes `start` before any write.
    pipe = load() if rank == 0 else None
    barrier()
    pipe = pipe or load()
    ext = FORMATS[plan.format]
    for job in my_share(jobs, rank, world):
        images = pipe.generate(job.prompt, seed=job.seed, **job.settings)
        for k, image in enumerate(images):
            print(save_image(image, plan.path / image_name(start, job, k, ext), overwrite=False))
    barrier()
    return 0
