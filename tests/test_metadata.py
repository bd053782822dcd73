"""A1111 infotext (format + parse), PNG text chunks, and `stablekit png-info`."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from stablekit.cli import main
from stablekit.errors import StablekitError
from stablekit.metadata import format_parameters, parse_parameters, read_png_info, save_png

FIXTURES = Path("/work/shared/fixtures/a1111-parameters-examples.txt")


def _examples() -> list[str]:
    body = "\n".join(line for line in FIXTURES.read_text().splitlines() if not line.startswith("#"))
    return [block.strip() for block in body.split("\n----\n")]


EXAMPLES = _examples()


def test_fixture_file_has_three_examples():
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("text", EXAMPLES)
def test_a1111_examples_round_trip(text):
    fields = parse_parameters(text)
    again = format_parameters(fields["Prompt"], fields["Negative prompt"], fields)
    assert parse_parameters(again) == fields


def test_a1111_examples_parse():
    first, second, third = (parse_parameters(t) for t in EXAMPLES)
    assert first == {
        "Prompt": "a photo of an astronaut riding a horse on mars", "Negative prompt": "",
        "Steps": "20", "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": "7",
        "Seed": "1234", "Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly", "Version": "v1.10.1",
    }
    assert second["Prompt"] == "(masterpiece:1.2), best quality, 1girl, [smile], BREAK\ncity street at night, neon lights"
    assert second["Negative prompt"] == "lowres, bad anatomy, (worst quality:1.4)"
    assert (second["Size-1"], second["Size-2"], second["Clip skip"]) == ("512", "768", "2")
    assert second["Lora hashes"] == "detail_tweaker: 3a4e5a7b8c9d"  # quoted value, unquoted
    assert third["Prompt"] == "a cozy cabin in the woods, <lora:watercolor_style:0.8>"
    assert third["Lora hashes"] == "watercolor_style: 9b8a7c6d5e4f"


def test_examples_format_back_to_the_same_text():
    # Examples 1 and 3 come back byte for byte. Example 2 lists "Clip skip" before "Denoising
    # strength"; A1111's create_infotext puts Denoising strength first, and so do we.
    for text in EXAMPLES[0], EXAMPLES[2]:
        fields = parse_parameters(text)
        assert format_parameters(fields["Prompt"], fields["Negative prompt"], fields) == text
    fields = parse_parameters(EXAMPLES[1])
    again = format_parameters(fields["Prompt"], fields["Negative prompt"], fields)
    assert again == EXAMPLES[1].replace("Clip skip: 2, Denoising strength: 0.45", "Denoising strength: 0.45, Clip skip: 2")


def test_format_uses_a1111_order_and_rules():
    settings = {
        "Version": "stablekit 0.1.0", "Lora hashes": "a: 123", "Clip skip": 2, "Model": "name",
        "Seed": 1, "Size": (512, 512), "CFG scale": 7.0, "Schedule type": "Karras",
        "Sampler": "DPM++ 2M", "Steps": 20, "Model hash": "1234567890", "VAE": None,
    }
    assert format_parameters("a cat", "", settings) == (
        "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        'Model hash: 1234567890, Model: name, Clip skip: 2, Lora hashes: "a: 123", Version: stablekit 0.1.0'
    )
    text = format_parameters("a cat", "ugly", {"Steps": 20, "CFG scale": 6.5, "Seed": 3, "Clip skip": 1})
    assert text == "a cat\nNegative prompt: ugly\nSteps: 20, CFG scale: 6.5, Seed: 3"  # clip skip 1 omitted


def test_quoting_and_multiline_round_trip():
    settings = {"Steps": 20, "Sampler": "Euler", "Seed": 5, "Note": 'say "hi", then: go', "Quote": '"x"', "Lines": "a\nb"}
    text = format_parameters("line one\nline two", "neg one\nneg two", settings)
    assert 'Note: "say \\"hi\\", then: go"' in text
    fields = parse_parameters(text)
    assert fields["Prompt"] == "line one\nline two" and fields["Negative prompt"] == "neg one\nneg two"
    assert fields["Note"] == 'say "hi", then: go' and fields["Quote"] == '"x"' and fields["Lines"] == "a\nb"


def test_parse_edge_cases_as_a1111():
    # fewer than three pairs on the last line: it is part of the prompt
    assert parse_parameters("a cat\nSteps: 20") == {"Prompt": "a cat\nSteps: 20", "Negative prompt": ""}
    assert parse_parameters("") == {"Prompt": "", "Negative prompt": ""}
    fields = parse_parameters("  a cat  \r\nSteps: 20, Seed: 1, Empty: , Seed resize from: 64x32, Hires resize: 0x0")
    assert fields["Prompt"] == "a cat" and "Empty" not in fields
    assert (fields["Seed resize from-1"], fields["Seed resize from-2"]) == ("64", "32")
    # negative only
    assert parse_parameters("Negative prompt: bad\nSteps: 1, Seed: 2, CFG scale: 3")["Negative prompt"] == "bad"


def test_format_rejects_keys_a1111_cannot_read():
    with pytest.raises(StablekitError, match="infotext key"):
        format_parameters("a", "", {"Bad:key": 1})


def _image():
    return Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))


def test_save_and_read_png(tmp_path):
    params = format_parameters("a cat, 猫", "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1})
    record = {"prompt": "a cat, 猫", "seed": 1, "path": tmp_path}
    path = save_png(_image(), tmp_path / "out.png", params, record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left
    info = read_png_info(path)
    assert info["parameters"] == params and info["fields"]["Prompt"] == "a cat, 猫"
    assert info["stablekit"] == {"prompt": "a cat, 猫", "seed": 1, "path": str(tmp_path)}
    assert b"tEXtstablekit\x00" in path.read_bytes()
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(_image()))
    # overwriting works, array input works
    save_png(np.zeros((4, 4, 3), np.uint8), path, "b", None)
    assert read_png_info(path)["stablekit"] is None and read_png_info(path)["parameters"] == "b"


def test_reads_a1111_png(tmp_path):
    # What A1111 writes: only a "parameters" tEXt chunk (PngInfo.add_text).
    info = PngInfo()
    info.add_text("parameters", EXAMPLES[1])
    _image().save(tmp_path / "a1111.png", pnginfo=info)
    result = read_png_info(tmp_path / "a1111.png")
    assert result["stablekit"] is None and result["parameters"] == EXAMPLES[1]
    assert result["fields"]["Model"] == "anythingV5"


def _one_line_error(path, match):
    with pytest.raises(StablekitError, match=match) as err:
        read_png_info(path)
    assert "\n" not in str(err.value)


def test_unreadable_files_give_one_line_errors(tmp_path):
    good = save_png(_image(), tmp_path / "good.png", "x", {"a": 1})
    data = good.read_bytes()
    (tmp_path / "text.png").write_text("not an image")
    _one_line_error(tmp_path / "text.png", "not a PNG")
    _one_line_error(tmp_path / "missing.png", "cannot read")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "cut.png", "damaged PNG")
    idat = data.index(b"IDAT")
    flipped = data[: idat + 6] + bytes([data[idat + 6] ^ 0xFF]) + data[idat + 7 :]
    (tmp_path / "crc.png").write_bytes(flipped)
    _one_line_error(tmp_path / "crc.png", "damaged PNG")
    info = PngInfo()
    info.add_text("stablekit", "{broken")
    _image().save(tmp_path / "json.png", pnginfo=info)
    _one_line_error(tmp_path / "json.png", "not valid JSON")


def test_png_info_cli(tmp_path, capsys):
    path = save_png(_image(), tmp_path / "out.png", EXAMPLES[0], {"seed": 1234})
    assert main(["png-info", str(path)]) == 0
    assert capsys.readouterr().out == EXAMPLES[0] + "\n"
    assert main(["png-info", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fields"]["Seed"] == "1234" and out["stablekit"] == {"seed": 1234}
    _image().save(tmp_path / "plain.png")
    assert main(["png-info", str(tmp_path / "plain.png")]) == 2
    assert "no generation parameters" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello")
    assert main(["png-info", str(tmp_path / "x.txt")]) == 2
    assert capsys.readouterr().err.startswith("stablekit: error: ")
