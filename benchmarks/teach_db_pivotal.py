"""DreamBooth with the identifier's own embedding trained at a textual-inversion rate (a diagnostic).

teach_db_probe.py showed that DreamBooth's text encoder, frozen or at text_encoder_lr 1e-5 / 5e-5,
never moves the "sks" row (norm 0.084, untrained) and "a sks square" stays at cosine 0.983 to
"a square": the UNet gets one context for the subject and the class images. Here the text
encoder stays frozen except the "sks" row, which trains at `--row-lr` (a TI rate) beside the
full UNet at the recipe's lr: pivotal tuning (diffusers' train_dreambooth_lora_sdxl_advanced.py
--train_text_encoder_ti, with the identifier's existing row as the start). Same data, loop and
export as `stablekit train dreambooth`; judge it afterwards with
`teach_targets.py dreambooth --skip-train --name NAME --subject-color orange`.

    nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teach_db_pivotal.py --name m3-db-orange-prior-pivotal [--no-prior]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stablekit.shapes import teach_eval as te
from stablekit.train.config import to_toml
from stablekit.train.export import export
from stablekit.train.loop import train as train_loop
from stablekit.train.methods import as_record, resolve
from stablekit.train.optim import ParamGroups
from stablekit.train.run import dreambooth_data, load_components, load_data, native_size
from stablekit.train.strategies.finetune import FinetuneStrategy


@dataclass
class PivotalStrategy(FinetuneStrategy):
    """Full UNet + one trainable token row (substituted by a forward hook, as textual inversion does)."""

    word: str = "sks"
    name: str = "dreambooth"
    row: torch.nn.Parameter = field(default=None, repr=False)

    def __post_init__(self):
        super().__post_init__()
        c = self.components
        (self.token_id,) = c.tokenizer(self.word, add_special_tokens=False).input_ids
        emb = c.text_encoder.get_input_embeddings()
        self.row = torch.nn.Parameter(emb.weight[self.token_id].detach().clone())
        emb.register_forward_hook(self._substitute)
        self.caption_hook = lambda caption: caption  # keeps the text cache off: the row trains

    def _substitute(self, module, inputs, output):
        hit = inputs[0] == self.token_id
        return torch.where(hit[..., None], self.row.to(output.dtype), output) if bool(hit.any()) else output

    def trainable_parameters(self):
        unet = [p for p in self.components.unet.parameters() if p.requires_grad]
        return ParamGroups(unet, [self.row])  # the row gets text_encoder_lr

    def write(self) -> None:
        with torch.no_grad():
            self.components.text_encoder.get_input_embeddings().weight[self.token_id] = self.row

    def state_dict(self) -> dict:
        return {"unet": self.components.unet.state_dict(), "row": self.row.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.components.unet.load_state_dict(state["unet"])
        with torch.no_grad():
            self.row.copy_(state["row"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", default="runs/teach")
    parser.add_argument("--subject-color", default="orange")
    parser.add_argument("--row-lr", type=float, default=5e-3, help="learning rate of the identifier's row")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=None, help="the UNet's learning rate (default: the recipe's)")
    parser.add_argument("--no-prior", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    data = te.render_method_data("dreambooth", out / "data", args.subject_color)["data"]
    s, tc = resolve("dreambooth", data=str(data), out=str(out / "runs"), name=args.name, steps=args.steps, lr=args.lr,
                    instance_prompt=te.INSTANCE_PROMPT, class_prompt="" if args.no_prior else te.CLASS_PROMPT,
                    train_text_encoder=False, text_encoder_lr=args.row_lr, sample_every=0, tensorboard=False)
    record = as_record("dreambooth", s, tc)
    comps = load_components("")
    dataset = dreambooth_data(s, tc, comps, load_data(s.data, native_size(comps), s.instance_prompt))
    strategy = PivotalStrategy(components=comps, prior_loss_weight=s.prior_loss_weight)
    t = time.time()
    train_loop(tc, strategy, dataset, record=record)
    strategy.write()
    export("dreambooth", s, strategy, comps, Path(s.out), record)
    (Path(s.out) / f"{s.name}.toml").write_text(to_toml(record))
    print(f"{args.name}: trained in {time.time() - t:.0f} s; row norm {strategy.row.norm().item():.3f}")


if __name__ == "__main__":
    main()
