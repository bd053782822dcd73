"""Generation metadata: A1111's "parameters" text (exact format, both ways) in PNG, JPEG and WebP.

`format_parameters(prompt, negative_prompt, settings)` / `parse_parameters(text)`;
`annotate(image, parameters, record)` -> an image whose ordinary `save(path)` writes both;
`save_image(image, path)` (atomic) / `save_png(image, path, parameters, record)`;
`read_image_info(path)` (alias `read_png_info`). Output paths of the CLI: `metadata.outputs`.
See docs/png-metadata.md.
"""
from stablekit.metadata.annotate import AnnotatedImage, annotate
from stablekit.metadata.files import IMAGE_EXTENSIONS, read_image_info, read_png_info, save_image, save_png
from stablekit.metadata.infotext import format_parameters, parse_parameters

__all__ = ["AnnotatedImage", "IMAGE_EXTENSIONS", "annotate", "format_parameters", "parse_parameters",
           "read_image_info", "read_png_info", "save_image", "save_png"]
