"""The user-facing training methods and their settings: one flat, typed configuration per method.

A run's settings are the method's dataclass (model, data, output, what trains) plus TrainConfig
(steps, lr, schedule, ...), read in this order, later winning: the method's defaults, the
model family's recipe (TINY_RECIPES: for the embedded shapes model and other tiny models, chosen
by the other settings given where one recipe does not fit all, as tiny DreamBooth's; SD 1.x,
2.x and SDXL keep the reference trainers' defaults), a TOML file (flat keys, `batch_size` or
`batch-size`), keyword arguments / CLI flags. Unknown keys are an error that names them. `resolve()` returns the typed pair; `as_record()` the flat dict written
beside every checkpoint and printed by `--print-config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePath

from stablekit.errors import StablekitError
from stablekit.train.config import TrainConfig, read_toml


@dataclass
class MethodConfig:
    """Settings every method shares."""

    model: str = ""  # a model file or diffusers folder; "" = the embedded shapes model
    data: str = ""  # a folder of images + .txt captions, metadata.jsonl, CSV or kohya dataset TOML
    out: str = "runs/train"  # the final artefact is <out>/<name>.safetensors
    name: str = ""  # "" = the method's name (textual inversion: the token without <>)
    snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting (0: off; 5 is the paper's value)
    noise_offset: float = 0.0  # offset noise strength (kohya's noise_offset; 0.05-0.1 typical)
    prior_loss_weight: float = 1.0  # loss weight of regularisation / class images (is_reg)
    sample_prompts: list[str] = field(default_factory=list)  # validation grid prompts (every sample_every steps)
    sample_steps: int = 20
    sample_cfg: float = 7.0
    sample_seed: int = 0
    cache_dir: str = ""  # encoder cache of latents / text states ("" = $STABLEKIT_CACHE_DIR/train; "off" = none)


@dataclass
class FinetuneConfig(MethodConfig):
    train_text_encoder: bool = False


@dataclass
class LoraSettings(MethodConfig):
    rank: int = 8
    alpha: float = 8.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    conv: bool = False  # LoCon: also the ResNet / sampling convolutions
    train_text_encoder: bool = False


@dataclass
class TextualInversionConfig(MethodConfig):
    token: str = ""  # the placeholder, e.g. "<hexagon>"; captions use it (or it is put in front)
    init_word: str = ""  # its vectors start as this word's embedding, e.g. "shape"
    vectors: int = 1  # embedding vectors per token
    # captions of images without a caption file: templates with "{}" for the token, drawn at random
    # each step ([] = the learnable_property's list, diffusers' flag: "object" or "style"); the
    # resolved config holds the list used
    learnable_property: str = "object"
    caption_templates: list[str] = field(default_factory=list)


@dataclass
class DreamBoothConfig(LoraSettings):
    instance_prompt: str = ""  # e.g. "a sks square": the caption of every instance image (caption files or none)
    class_prompt: str = ""  # e.g. "a square": the caption of the class images ("" = no prior preservation)
    class_data: str = ""  # a folder of class images; "" = drawn by the model itself (cached)
    num_class_images: int = 50
    class_steps: int = 20  # sampler steps for drawing class images
    class_cfg: float = 7.0
    lora: bool = False  # DreamBooth-LoRA: train a LoRA instead of the full UNet
    # pivotal tuning (train/pivotal.py): > 0 trains the identifier's token-embedding row(s) (the words of
    # instance_prompt not in class_prompt) at this rate beside the UNet; 0 = off. Full DreamBooth exports
    # them in the checkpoint's text encoder; --lora also writes <out>/<identifier>.safetensors, an A1111
    # embedding that must be loaded with the LoRA
    identifier_lr: float = 0.0


@dataclass
class ControlNetConfig(MethodConfig):
    resolution: int = 0  # training size of a folder source (0: the model's native size); a TOML sets its own
    conditioning_dir: str = ""  # folder source: the condition images ("" = DATA/conditioning)
    caption_dropout: float = 0.0  # share of captions dropped to "" (learn from the condition alone)
    sample_conditions: list[str] = field(default_factory=list)  # condition images of the validation grid


@dataclass
class InpaintingConfig(FinetuneConfig):
    resolution: int = 0  # training size of a folder / CSV / jsonl source (0: the model's native size)


@dataclass
class LcmConfig(LoraSettings):
    """LCM-LoRA distillation (train/strategies/lcm.py); defaults are diffusers' reference script's."""

    rank: int = 64
    alpha: float = 64.0
    conv: bool = True
    cfg_min: float = 6.0  # teacher CFG scale drawn in [cfg_min, cfg_max] (the reference's w 5..15, w = scale - 1)
    cfg_max: float = 16.0
    ddim_steps: int = 50  # DDIM solver steps: skipping interval 1000 / ddim_steps timesteps
    loss_type: str = "huber"  # huber (pseudo-Huber) or l2
    huber_c: float = 0.001
    timestep_scaling: float = 10.0  # consistency boundary scalings c_skip / c_out
    sample_steps: int = 4  # the validation grid uses the LCM sampler
    sample_cfg: float = 1.0  # the guidance is distilled in: one UNet call per step (the reference's validation)


# Per-method defaults for the loop (what the reference trainers start from; each is a setting).
_COMMON = dict(steps=1000, batch_size=4, lr_schedule="constant", warmup_steps=0, min_lr_ratio=0.0,
               checkpoint_every=250, sample_every=250, keep_checkpoints=2)
METHODS: dict[str, tuple[type, dict]] = {
    "finetune": (FinetuneConfig, dict(_COMMON, lr=1e-5)),
    "lora": (LoraSettings, dict(_COMMON, lr=1e-4)),
    "textual-inversion": (TextualInversionConfig, dict(_COMMON, lr=5e-3, weight_decay=0.0)),
    "dreambooth": (DreamBoothConfig, dict(_COMMON, steps=400, batch_size=2, lr=5e-6)),
    "controlnet": (ControlNetConfig, dict(_COMMON, lr=1e-5)),  # diffusers' train_controlnet.py: lr 1e-5
    "inpainting": (InpaintingConfig, dict(_COMMON, lr=1e-5)),
    # train_lcm_distill_lora_sd_wds.py: lr 1e-4, constant after 500 warm-up steps, batch 16 per GPU
    "lcm": (LcmConfig, dict(_COMMON, lr=1e-4, warmup_steps=500, batch_size=16, steps=4000)),
}


# What measured best on the embedded shapes model (docs/reports/teach.md; each row names its run).
# A tiny UNet needs learning rates 10-100x the reference trainers' (which are tuned for an 860 M
# parameter SD UNet), so these apply when the model is a tiny one (model_family == "tiny").
TINY_UNET_PARAMS = 100_000_000
TINY_RECIPES: dict[str, dict] = {
    # locon-r8-lr3e-3-cos800: hollow 0.50 on model 1 (constant lr at 500 steps: 0.21);
    # m2-lora-recipe: hollow 0.69 (n 32) on model 2; 1600 steps overfit (m2-lora-1600: 0.56).
    # Model 3: 0.69 from 64 outline images, 0.81 (n 32) / 0.75 (n 64) from 256 (m3-lora-256: the data,
    # not the recipe, was the limit); a text-encoder LoRA at 3e-4 adds nothing (0.69) and takes the
    # file past 10 %. Min-SNR-gamma 5 (as the base model was pretrained) on the 256: 0.84 (n 32) /
    # 0.80 (n 64) (m3-lora-256-snr5). Rank 16 would exceed the 10 % file target.
    "lora": dict(lr=3e-3, steps=800, lr_schedule="cosine", warmup_steps=20, rank=8, alpha=8.0, conv=True,
                 snr_gamma=5.0),
    # ft-lr1e-4: hexagon adherence 0.68 after 150 steps at lr 1e-4 (1e-5 barely moves the tiny UNet);
    # on model 2, lr 1e-4 x 300 steps (m2-ft-recipe): adherence 0.756, base drop 0.076; lr 5e-5 x 600
    # (m2-ft-lr5e-5-600): the same 0.756 with drop 0.019 (meets <= 0.05). The hexagon *shape* (0.19)
    # is what neither learns. Model 3: the frozen text encoder reads "hexagon" (two tokens it never
    # trained on) like any unknown word, so the text encoder trains too (at lr, with the replay data):
    # m3-ft-te 600 steps shape 0.34 (frozen: 0.19); m3-ft-te-1800 shape 0.56, adherence 0.842,
    # base drop 0.027 (frozen, 1800 steps: shape 0.38, adherence 0.818); m3-ft-te-2400: adherence
    # 0.884, shape 0.59, base drop 0.024 (both targets met).
    "finetune": dict(lr=5e-5, steps=2400, lr_schedule="cosine", warmup_steps=20, train_text_encoder=True),
    # textual inversion, model 3 (56 prompts, init word "circle"): the method defaults (1 vector, lr
    # 5e-3 constant, 1000 steps; m3-ti-defaults) draw a hexagon in 1 of 56 (0.02), 8 vectors at lr
    # 5e-3 with a cosine decay over 400 steps (kohya-style; m3-ti-v8-s13, session 13, evaluated with
    # the 8 tokens it was trained with) in 3 of 56 (0.05), colour 0.95 both: no better at the shape,
    # the same colour in 400 steps instead of 1000. (The 0.18 once quoted here read the 8 vectors as
    # 15 tokens; withdrawn.) The 0.70 target stays out of reach of the frozen UNet (per-image
    # ceiling 0.55, teach_ti_ceiling.py).
    "textual-inversion": dict(vectors=8, lr=5e-3, steps=400, lr_schedule="cosine", warmup_steps=20),
    # db-prior: class 0.63 (subject 0.00) -- the best of three measured; training the text encoder
    # too at this lr broke the class prompts (db-prior-te: class 0.17), so it stays off; on model 2
    # a text-encoder LoRA at lr 1e-3 (m2-dbl-te-*) re-maps whole prompts (subject 0.00, class
    # 0.21-0.63): lower it with text_encoder_lr before turning it on. No DreamBooth setting reaches
    # the teal subject on model 2: its autoencoder turns teal into blue / green (vae round trip).
    # Model 3, orange diagnostic subject: the text encoder at text_encoder_lr 1e-5 binds the
    # subject's colour (orange 0.05 -> 0.40 with prior preservation, m3-db-orange-prior-te1e-5;
    # 0.05 -> 0.55 and subject 0.05 -> 0.50 without, m3-db-orange-noprior-te1e-5 against the
    # reproduced m3-db-orange-noprior-rerun) at no measured cost to the plain squares (0.50 ->
    # 0.46, n 24) at prior weight 1.0; 5e-5 costs them (0.29), and so does prior weight 0.3 (0.17). It does not make "sks" a word of its own (its context
    # stays at cosine 0.983 to "a square", teach_db_probe.py), so prior preservation still blocks
    # the diamond. Measured on full DreamBooth; with --lora the text-encoder LoRA trains at it too.
    # Without a class prompt and with --lora this is the recipe; full DreamBooth with a class prompt
    # adds TINY_DREAMBOOTH_PIVOTAL on top (below).
    "dreambooth": dict(lr=1e-4, steps=200, num_class_images=20, train_text_encoder=True, text_encoder_lr=1e-5),
    # LCM-LoRA: first guesses (speed3, session 7), not yet a measured best. The UNet is 48/96/128
    # channels wide, so the reference's rank 64 would be close to full rank; the teacher's CFG range
    # sits around CFG 3-5, where the base model's adherence is highest (docs/benchmarks.md sweeps).
    # lr 1e-3 (lcm-short, batch 16) made the 4-step images worse by step 100 and the loss rose
    # 0.009 -> 0.03: the reference's 1e-4 until a run says otherwise.
    # docs/benchmarks.md, LCM: a 4-step solver (k 250) at lr 5e-4 is the one setting measured to beat the
    # base model at 4 steps CFG 1 (eval-v1 0.935 vs 0.903 after 50 steps of batch 16); k 20 at 1e-3 degraded
    "lcm": dict(lr=5e-4, steps=2000, batch_size=64, warmup_steps=10, ddim_steps=4, rank=16, alpha=16.0,
                cfg_min=2.0, cfg_max=6.0),
}


# Full DreamBooth with a class prompt on a tiny model: pivotal tuning (train/pivotal.py), the
# identifier's token row at a textual-inversion rate beside a slower UNet, text encoder frozen.
# Model 3, orange diagnostic subject, n 20 subject / 24 plain-square prompts, with prior
# preservation: subject 0.85 (target 0.80) with plain squares 0.83 (target 0.85;
# m3-db-orange-prior-idlr5e-3, session 5, reproduced exactly as m3-db-orange-idlr-s13 and, with no
# train flags, m3-db-orange-recipe-s14); the recipe above gives subject 0.00 (orange 0.40) with
# plain squares 0.46 there (m3-db-orange-prior-te1e-5). Prior weight 0: subject 0.80, plain squares
# 0.33 (m3-db-orange-noprior-idlr-s14) against the recipe above's 0.50 / 0.00. Seed 0 was the best
# of five: --seed 0-4 give subject 0.10-0.85 (mean 0.47), plain squares 0.46-0.83 (mean 0.58),
# the recipe above 0.00 and 0.33-0.46 at the same seeds (m3-db-orange-*-seed*-s14). Teal target: plain
# squares 0.88 against 0.67 (m3-db-teal-recipe-s14; teal itself is lost to the autoencoder). At
# UNet lr 1e-4 the plain squares fell to 0.50, at 5e-5 to 0.67 (session 5).
# Only where it was measured: identifier_lr needs a class prompt to find the identifier
# (identifier_words), and DreamBooth-LoRA trains rank-8 factors, for which lr 3e-5 is far below the
# LoRA recipe's 3e-3; there, and with an explicit identifier_lr 0 (pivotal off), the recipe above.
TINY_DREAMBOOTH_PIVOTAL = dict(identifier_lr=5e-3, lr=3e-5, steps=400, train_text_encoder=False)


def dreambooth_pivotal_applies(given: dict) -> bool:
    """Whether the tiny pivotal DreamBooth recipe fits these settings: full DreamBooth (no lora)
    with a class prompt (prior preservation or not) and identifier_lr not set to 0."""
    return (bool(str(given.get("class_prompt", "")).strip()) and not given.get("lora", False)
            and given.get("identifier_lr", None) != 0)


def model_family(model: str) -> str:
    """"tiny" for the embedded shapes model or any model whose UNet has under 100 M parameters
    (read from the file header, no weights loaded); "reference" otherwise (SD 1.x/2.x/SDXL) or when
    the model cannot be read here (loading it later gives the real error)."""
    from pathlib import Path

    if not model:
        return "tiny"  # "" = the embedded shapes model
    try:
        return "tiny" if _unet_parameters(Path(model)) < TINY_UNET_PARAMS else "reference"
    except Exception:  # unreadable / missing / not safetensors: no recipe; load_model reports it
        return "reference"


def _unet_parameters(path) -> int:
    import math

    from safetensors import safe_open

    if path.is_dir():
        files, prefix = sorted((path / "unet").glob("*.safetensors"))[:1], ""
    else:
        files, prefix = [path], "model.diffusion_model."
    if not files:
        raise FileNotFoundError(path)
    with safe_open(str(files[0]), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix))


def recipe(method: str, model: str, given: dict | None = None) -> dict:
    """The family recipe's settings for `method` on `model` ({} for SD 1.x/2.x/SDXL), for the
    user's other settings `given` (tiny DreamBooth: pivotal tuning only with a class prompt and
    no LoRA, see TINY_DREAMBOOTH_PIVOTAL)."""
    method = check_method(method)
    if model_family(model) != "tiny":
        return {}
    settings = dict(TINY_RECIPES.get(method, {}))
    if method == "dreambooth" and dreambooth_pivotal_applies(given or {}):
        settings.update(TINY_DREAMBOOTH_PIVOTAL)
    return settings


def method_names() -> list[str]:
    return list(METHODS)


def check_method(method: str) -> str:
    method = method.replace("_", "-")
    if method not in METHODS:
        raise StablekitError(f"unknown training method {method!r}: use one of {', '.join(METHODS)}")
    return method


def setting_fields(method: str) -> tuple[list[dataclasses.Field], list[dataclasses.Field]]:
    """(method fields, loop fields) a user may set; the loop's out_dir is derived from out/name."""
    cls, _ = METHODS[check_method(method)]
    return list(dataclasses.fields(cls)), [f for f in dataclasses.fields(TrainConfig) if f.name != "out_dir"]


def resolve(method: str, config_path=None, check: bool = True, **overrides) -> tuple[MethodConfig, TrainConfig]:
    """Defaults < TOML file < overrides (None values ignored). Returns (method config, loop config).

    check=False skips the method's required-setting checks (for printing the defaults).
    """
    method = check_method(method)
    cls, loop_defaults = METHODS[method]
    own, loop = setting_fields(method)
    own_names, loop_names = {f.name for f in own}, {f.name for f in loop}
    given = {}
    if config_path:
        data = read_toml(config_path)
        if data.get("method", method).replace("_", "-") != method:
            raise StablekitError(f"{config_path} is a {data['method']} config; run 'stablekit train {data['method']}' or remove its method key")
        given.update({k.replace("-", "_"): v for k, v in data.items() if k != "method"})
    given.update({k.replace("-", "_"): v for k, v in overrides.items() if v is not None})
    given = {k: (str(v) if isinstance(v, PurePath) else v) for k, v in given.items()}  # paths may be Path objects
    unknown = sorted(set(given) - own_names - loop_names)
    if unknown:
        raise StablekitError(f"unknown setting(s) {unknown} for {method}; valid ones: {sorted(own_names | loop_names)}")
    given = {**recipe(method, given.get("model", ""), given), **given}  # the model family's recipe, below the user's
    settings = cls(**{k: v for k, v in given.items() if k in own_names})
    loop_values = {**loop_defaults, **{k: v for k, v in given.items() if k in loop_names}}
    if "betas" in loop_values:
        loop_values["betas"] = tuple(loop_values["betas"])
    if not settings.name:
        settings.name = settings.token.strip("<>") if method == "textual-inversion" and settings.token else method
    if isinstance(settings, TextualInversionConfig):
        settings.caption_templates = list(caption_templates(settings))
    if check:
        _check(method, settings)
    tc = TrainConfig(**loop_values)
    tc.out_dir = str(run_dir(settings))
    return settings, tc.validate()


def caption_templates(s: TextualInversionConfig) -> tuple[str, ...]:
    """The textual-inversion captions of images without a caption file (see the config's comment)."""
    from stablekit.train.strategies.textual_inversion import TEMPLATES, check_templates

    if s.caption_templates:
        return check_templates(s.caption_templates)
    if s.learnable_property not in TEMPLATES:
        raise StablekitError(f"unknown learnable_property {s.learnable_property!r}: use {' or '.join(TEMPLATES)}, "
                             "or give caption_templates")
    return TEMPLATES[s.learnable_property]


def uncaptioned_caption(method: str, s: MethodConfig) -> str | None:
    """The caption of an image without a caption file (kohya's class_tokens), or None when the
    method learns from real captions (finetune, LoRA, ...: a missing caption stays an error).

    DreamBooth captions every instance image with the instance prompt whatever its file says (the
    paper's "a [V] [class noun]"), so a bare folder is its normal input; textual inversion gets the
    empty caption, which its strategy replaces by a template each step.
    """
    if method == "dreambooth":
        return s.instance_prompt
    if method == "textual-inversion":
        return ""
    return None


def run_dir(settings: MethodConfig):
    """Checkpoints, samples, logs: <out>/<name>-training/ (the artefacts go in <out> itself)."""
    from pathlib import Path

    return Path(settings.out) / f"{settings.name}-training"


def _check(method: str, s: MethodConfig) -> None:
    if method == "textual-inversion" and (not s.token or not s.init_word):
        raise StablekitError("textual inversion needs --token (e.g. '<hexagon>') and --init-word (e.g. 'shape')")
    if method == "dreambooth" and not s.instance_prompt:
        raise StablekitError("DreamBooth needs --instance-prompt (e.g. 'a sks square'); add --class-prompt "
                             "(e.g. 'a square') for prior preservation")
    if isinstance(s, DreamBoothConfig):
        _check_dreambooth(s)
    if isinstance(s, LcmConfig):
        _check_lcm(s)
    if isinstance(s, LoraSettings) and (s.rank < 1 or s.alpha <= 0 or not 0 <= s.dropout < 1):
        raise StablekitError(f"need rank >= 1, alpha > 0 and 0 <= dropout < 1 (got {s.rank}, {s.alpha}, {s.dropout})")
    if isinstance(s, InpaintingConfig) and s.resolution < 0:
        raise StablekitError(f"need resolution >= 0 (got {s.resolution})")
    if isinstance(s, ControlNetConfig) and (s.resolution < 0 or not 0 <= s.caption_dropout <= 1):
        raise StablekitError(f"need resolution >= 0 and 0 <= caption_dropout <= 1 (got {s.resolution}, {s.caption_dropout})")
    if s.snr_gamma < 0 or s.noise_offset < 0 or s.prior_loss_weight < 0:
        raise StablekitError("snr_gamma, noise_offset and prior_loss_weight must be >= 0")


def _check_dreambooth(s: DreamBoothConfig) -> None:
    if s.identifier_lr < 0:
        raise StablekitError(f"need identifier_lr >= 0 (got {s.identifier_lr}); 0 turns pivotal tuning off, 5e-3 is a textual-inversion rate")
    if s.identifier_lr > 0:
        from stablekit.train.pivotal import identifier_words

        identifier_words(s.instance_prompt, s.class_prompt)  # the one-line error before any model is loaded


def _check_lcm(s: LcmConfig) -> None:
    if s.train_text_encoder:
        raise StablekitError("LCM-LoRA distils the UNet only: drop --train-text-encoder")
    if not 1 <= s.cfg_min <= s.cfg_max:
        raise StablekitError(f"need 1 <= cfg_min <= cfg_max (got {s.cfg_min}, {s.cfg_max})")
    if not 1 <= s.ddim_steps <= 1000 or s.huber_c <= 0 or s.timestep_scaling <= 0:
        raise StablekitError(f"need 1 <= ddim_steps <= 1000, huber_c > 0, timestep_scaling > 0 "
                             f"(got {s.ddim_steps}, {s.huber_c}, {s.timestep_scaling})")
    if s.loss_type not in ("huber", "l2"):
        raise StablekitError(f"unknown loss_type {s.loss_type!r}: use huber or l2")


def as_record(method: str, settings: MethodConfig, tc: TrainConfig) -> dict:
    """The flat resolved configuration: what `--config` reads back to the same run."""
    loop = {k: (list(v) if isinstance(v, tuple) else v) for k, v in tc.to_dict().items() if k != "out_dir"}
    return {"method": method, **dataclasses.asdict(settings), **loop}
