"""Generation metadata: A1111's "parameters" text (exact format, both ways) and PNG chunks.

`format_parameters(prompt, negative_prompt, settings)` / `parse_parameters(text)`;
`save_png(image, path, parameters, record)` / `read_png_info(path)`. See docs/png-metadata.md.
"""
from stablekit.metadata.infotext import format_parameters, parse_parameters
from stablekit.metadata.png import read_png_info, save_png

__all__ = ["format_parameters", "parse_parameters", "read_png_info", "save_png"]
