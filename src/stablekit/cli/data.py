"""`stablekit data ...`: prepare images, write captions, write kohya metadata + dataset TOML.

    stablekit data prepare SRC DST [--resolution N] [--buckets] [--crop center|face|focus]
                                   [--dedupe/--no-dedupe] [--overwrite] [--matte COLOR]
    stablekit data captions DIR --from filenames|csv|template|model|judge [...]
    stablekit data metadata DIR --out FILE [--toml FILE] [...]
"""
from __future__ import annotations

import argparse
import sys



def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset preparation: images, captions, kohya metadata",
                                 description=__doc__.splitlines()[0])
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 1)
    _register_prepare(sub)


def _register_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="convert a folder of images into training-ready PNGs",
                       description="Convert every image under SRC into PNGs under DST (same layout). "
                                   "Bad files are skipped and listed with the reason; sources are never "
                                   "changed; outputs are never overwritten without --overwrite.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--resolution", type=int, default=512,
                   help="square side, or the bucket area's side with --buckets (default 512; 0 keeps sizes)")
    p.add_argument("--buckets", action="store_true", help="crop to kohya's aspect-ratio buckets instead of squares")
    p.add_argument("--min-bucket-reso", type=int, default=256)
    p.add_argument("--max-bucket-reso", type=int, default=1024)
    p.add_argument("--bucket-reso-steps", type=int, default=64)
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
