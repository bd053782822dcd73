"""`stablekit data ...`: prepare images, write captions, write kohya metadata + dataset TOML.

    stablekit data prepare SRC DST [--resolution N] [--buckets] [--crop center|face|focus]
                                   [--dedupe/--no-dedupe] [--overwrite] [--matte COLOR]
    stablekit data captions DIR --from filenames|csv|template|model|judge [...]
    stablekit data metadata DIR --out FILE [--toml FILE] [...]
"""
from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

from stablekit.errors import StablekitError



def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset preparation: images, captions, kohya metadata",
                                 description=__doc__.splitlines()[0])
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND",
                               help="prepare: images -> training PNGs; captions: write captions; metadata: kohya files")
    data.set_defaults(func=lambda args: data.print_help() or 1)
    _register_prepare(sub)
    _register_captions(sub)
    _register_metadata(sub)


def _register_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="convert a folder of images into training-ready PNGs",
                       description="Convert every image under SRC into PNGs under DST (same layout). "
                                   "Bad files are skipped and listed with the reason; sources are never "
                                   "changed; outputs are never overwritten without --overwrite.")
    p.add_argument("src", metavar="SRC", help="folder of source images (read only, never modified)")
    p.add_argument("dst", metavar="DST", help="output folder for the training-ready PNGs and prepare-report.json")
    p.add_argument("--resolution", type=int, default=512,
                   help="square side, or the bucket area's side with --buckets (default 512; 0 keeps sizes)")
    p.add_argument("--buckets", action="store_true", help="crop to kohya's aspect-ratio buckets instead of squares")
    p.add_argument("--min-bucket-reso", type=int, default=256, help="--buckets: smallest bucket side (kohya min_bucket_reso; default 256)")
    p.add_argument("--max-bucket-reso", type=int, default=1024, help="--buckets: largest bucket side (kohya max_bucket_reso; default 1024)")
    p.add_argument("--bucket-reso-steps", type=int, default=64, help="--buckets: bucket sides are multiples of this (kohya bucket_reso_steps; default 64)")
    p.add_argument("--crop", choices=("center", "face", "focus"), default="center",
                   help="where the crop goes: the centre, the largest face (zoomed so it fills the frame), "
                        "or the most salient region")
    p.add_argument("--face-margin", type=float, default=2.0,
                   help="face crop: the crop's shorter side in face heights (default 2)")
    p.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=True,
                   help="skip perceptual duplicates (default on)")
    p.add_argument("--dedupe-distance", type=int, default=2, help="pHash bits that may differ (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--matte", default="white", help="colour behind transparent pixels (name, #hex or r,g,b)")
    p.add_argument("--min-side", type=int, default=64, help="skip images with a shorter side (default 64)")
    p.add_argument("--max-pixels", type=int, default=89_478_485,
                   help="skip images with more pixels (decompression bombs; default Pillow's limit)")
    p.add_argument("--no-captions", action="store_true", help="do not copy .txt/.caption files beside images")
    p.add_argument("--report", default=None, help="report JSON path (default DST/prepare-report.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)


def run_prepare(args) -> int:
    from stablekit.data.prepare import PrepareConfig, prepare
    from stablekit.data.prepare_image import parse_matte

    config = PrepareConfig(
        resolution=args.resolution, buckets=args.buckets, crop=args.crop, dedupe=args.dedupe,
        dedupe_distance=args.dedupe_distance, overwrite=args.overwrite, matte=parse_matte(args.matte),
        min_side=args.min_side, max_pixels=args.max_pixels, min_bucket_reso=args.min_bucket_reso,
        max_bucket_reso=args.max_bucket_reso, bucket_reso_steps=args.bucket_reso_steps,
        face_margin=args.face_margin, copy_captions=not args.no_captions,
    )
    progress = not args.no_progress and sys.stderr.isatty()
    report = prepare(args.src, args.dst, config, progress=progress, report_path=args.report)
    print(report.table())
    print(f"\nreport: {report.report_path} ({report.seconds:.1f} s)")
    return 0


def _register_captions(sub) -> None:
    p = sub.add_parser("captions", help="write captions (.txt or metadata.jsonl) for a folder of images",
                       description="Caption the images of DIR that have no caption yet (resumable). "
                                   "Sources: file names, a CSV/JSON table (or an attribute table), a template, "
                                   "a local captioning model (BLIP/BLIP-2/GIT), or the shapes-world judge.")
    p.add_argument("folder", metavar="DIR", help="folder of images to caption")
    p.add_argument("--from", dest="source", required=True,
                   choices=("filenames", "csv", "template", "model", "judge"),
                   help="where captions come from: file names, a CSV/JSON table, a template, a local model or the shapes judge")
    p.add_argument("--table", help="--from csv: a CSV, JSON, JSONL or CelebA list_attr_celeba.txt")
    p.add_argument("--image-column", default=None, help="--from csv: column holding the image file name (default: guessed)")
    p.add_argument("--caption-column", default=None, help="--from csv: column holding the caption (default: guessed)")
    p.add_argument("--attributes", action="store_true",
                   help="--from csv: the table holds 1/-1 attribute columns; turn them into captions")
    p.add_argument("--attribute-style", choices=("tags", "sentence"), default="tags", help="--attributes: write comma-separated tags (the lab's form) or sentences")
    p.add_argument("--template", default=None,
                   help='e.g. "a photo of {token} {class}, {caption}"; {name} is the file stem')
    p.add_argument("--token", default=None, help="identifier token, e.g. sks or ohwx")
    p.add_argument("--class-word", default=None, help="the class noun, e.g. shark")
    p.add_argument("--identifier", choices=("prefix", "replace", "before"), default="prefix",
                   help="where --token goes: before the caption, instead of the class word, or before it")
    p.add_argument("--model", default=None, help="--from model: a local transformers captioning folder")
    p.add_argument("--prompt", default=None, help="--from model: text the caption starts with")
    p.add_argument("--max-new-tokens", type=int, default=40, help="--from model: longest caption in tokens (default 40)")
    p.add_argument("--num-beams", type=int, default=1, help="--from model: beam search width (default 1: greedy)")
    p.add_argument("--device", default="cpu", help="--from model: torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="--from model: images per model call (default 8)")
    p.add_argument("--add-tags", default="", help="comma-separated tags to append")
    p.add_argument("--remove-tags", default="", help="comma-separated tags to remove")
    p.add_argument("--dedupe-tags", action="store_true", help="drop repeated tags")
    p.add_argument("--shuffle-tags", action="store_true", help="shuffle tags once (kohya's shuffle_caption)")
    p.add_argument("--keep-tokens", type=int, default=0, help="tags kept in front when shuffling")
    p.add_argument("--seed", type=int, default=0, help="seed for --shuffle-tags (default 0)")
    p.add_argument("--format", choices=("txt", "jsonl"), default="txt", help="write one .txt per image (default) or one metadata.jsonl")
    p.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    p.add_argument("--overwrite", action="store_true", help="replace existing captions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_captions)


def _caption_source(args):
    from stablekit.data import captioning as cap

    if args.source == "filenames":
        return lambda paths: [cap.caption_from_filename(p) for p in paths]
    if args.source == "template":
        if not args.template:
            raise StablekitError("--from template needs --template, e.g. 'a photo of {token} {class}'")
        return lambda paths: ["" for _ in paths]
    if args.source == "csv":
        if not args.table:
            raise StablekitError("--from csv needs --table FILE (CSV, JSON, JSONL or list_attr_celeba.txt)")
        if args.attributes:
            attrs = cap.read_attribute_table(args.table, args.image_column)
            table = {k: cap.attributes_to_caption(v, args.attribute_style, prefix=args.token
                                                  if args.attribute_style == "tags" else None)
                     for k, v in attrs.items()}
        else:
            table = cap.read_table(args.table, args.image_column, args.caption_column)
        return lambda paths: [table.get(p.name) for p in paths]
    if args.source == "judge":
        from PIL import Image

        return lambda paths: cap.judge_captions([Image.open(p).convert("RGB") for p in paths])
    if not args.model:
        raise StablekitError("--from model needs --model PATH (a local BLIP/BLIP-2/GIT folder)")
    from stablekit.data.caption_model import ModelCaptioner

    return ModelCaptioner(args.model, device=args.device, max_new_tokens=args.max_new_tokens,
                          prompt=args.prompt, num_beams=args.num_beams)


def run_captions(args) -> int:
    from stablekit.data import captioning as cap

    make = _caption_source(args)
    add = cap.split_tags(args.add_tags)
    remove = cap.split_tags(args.remove_tags)
    # the CelebA tags style already starts with the token; other sources get it here
    token_done = args.source == "csv" and args.attributes and args.attribute_style == "tags"

    def transform(path, text: str) -> str:
        if args.template:
            text = cap.apply_template(args.template, text, token=args.token or "",
                                      class_word=args.class_word or "", name=path.stem)
        if args.token and not token_done and not (args.template and "{token}" in args.template):
            text = cap.insert_identifier(text, args.token, args.class_word, args.identifier)
        if add or remove:
            text = cap.edit_tags(text, add, remove)
        if args.dedupe_tags:
            text = cap.dedupe_tags(text)
        if args.shuffle_tags:
            text = cap.shuffle_tags(text, args.keep_tokens, seed=zlib.crc32(f"{args.seed}:{path.name}".encode()))
        return text

    result = cap.caption_folder(args.folder, make, fmt=args.format, overwrite=args.overwrite,
                                batch_size=args.batch_size, recursive=args.recursive,
                                progress=not args.no_progress and sys.stderr.isatty(), transform=transform)
    missing = result.pop("no caption found")
    for key, value in result.items():
        print(f"{key:<18} {value}")
    print(f"{'no caption found':<18} {len(missing)}")
    for name in missing:
        print(f"  {name}")
    return 0


def _register_metadata(sub) -> None:
    p = sub.add_parser("metadata", help="write kohya's metadata JSON and a dataset TOML for a captioned folder",
                       description="Merge the captions of DIR (.txt beside images, or metadata.jsonl) into "
                                   "kohya's metadata JSON (as finetune/merge_captions_to_metadata.py does) and "
                                   "write a dataset TOML that kohya and stablekit read.")
    p.add_argument("folder", metavar="DIR", help="folder of images with captions")
    p.add_argument("--out", required=True, help="metadata JSON path")
    p.add_argument("--toml", default=None, help="dataset TOML path (default: --out with .toml)")
    p.add_argument("--full-path", action=argparse.BooleanOptionalAction, default=True,
                   help="key images by full path (default) or by stem inside image_dir")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--recursive", action="store_true", help="also include images in sub-folders")
    p.add_argument("--resolution", type=int, default=512, help="dataset resolution written to the TOML (default 512)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size written to the TOML (default 1)")
    p.add_argument("--buckets", action="store_true", help="enable_bucket = true")
    p.add_argument("--num-repeats", type=int, default=1, help="kohya num_repeats for the subset (default 1)")
    p.add_argument("--shuffle-caption", action="store_true", help="kohya shuffle_caption = true")
    p.add_argument("--keep-tokens", type=int, default=None, help="kohya keep_tokens (tags kept in front when shuffling)")
    p.add_argument("--reg-dir", default=None,
                   help="a regularisation (class) image folder: writes a DreamBooth-style TOML with caption "
                        "files and an is_reg subset instead of the metadata_file one")
    p.add_argument("--class-tokens", default=None, help="kohya class_tokens for caption-less images")
    p.add_argument("--overwrite", action="store_true", help="replace existing metadata/TOML files")
    p.set_defaults(func=run_metadata)


def run_metadata(args) -> int:
    from stablekit.data.kohya_writer import (
        DatasetToml, Subset, collect_captions, kohya_metadata, write_metadata_json,
    )

    folder = Path(args.folder).absolute()
    captions, missing = collect_captions(folder, args.caption_extension, args.recursive)
    if not captions:
        raise StablekitError(f"no captioned images in {folder}; write captions first "
                             f"(stablekit data captions {args.folder} --from ...)")
    out = Path(args.out).absolute()
    write_metadata_json(out, kohya_metadata(captions, args.full_path), args.overwrite)
    if args.reg_dir:
        subsets = [Subset(str(folder), num_repeats=args.num_repeats, class_tokens=args.class_tokens),
                   Subset(str(Path(args.reg_dir).absolute()), num_repeats=1, is_reg=True,
                          class_tokens=args.class_tokens)]
        extension = args.caption_extension
    else:
        subsets = [Subset(str(folder), metadata_file=str(out), num_repeats=args.num_repeats)]
        extension = None
    config = DatasetToml(subsets, resolution=args.resolution, batch_size=args.batch_size,
                         enable_bucket=args.buckets, shuffle_caption=args.shuffle_caption,
                         keep_tokens=args.keep_tokens, caption_extension=extension)
    toml_path = config.write(Path(args.toml) if args.toml else out.with_suffix(".toml"), args.overwrite)
    print(f"metadata: {out} ({len(captions)} images)")
    print(f"dataset TOML: {toml_path}")
    if missing:
        print(f"{len(missing)} images have no caption and were left out:")
        for p in missing:
            print(f"  {p.relative_to(folder)}")
    return 0
