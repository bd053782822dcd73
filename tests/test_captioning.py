"""Captions from file names, tables, attribute tables, templates, identifiers, tags, the judge."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from stablekit.cli import main
from stablekit.data import captioning as cap

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "kohya-dataset-examples"

CELEBA_NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young")
# The lecture's 0.txt: "celeba, arched_eyebrows, attractive, brown_hair, heavy_makeup, ..."
CELEBA_ROW_0 = {"Arched_Eyebrows", "Attractive", "Brown_Hair", "Heavy_Makeup", "High_Cheekbones",
                "Mouth_Slightly_Open", "No_Beard", "Pointy_Nose", "Smiling", "Straight_Hair",
                "Wearing_Earrings", "Wearing_Lipstick", "Young"}
CELEBA_ROW_1 = {"Bags_Under_Eyes", "Big_Nose", "Brown_Hair", "High_Cheekbones", "Male",
                "Mouth_Slightly_Open", "No_Beard", "Smiling", "Young"}
LAB_0 = ("celeba, arched_eyebrows, attractive, brown_hair, heavy_makeup, high_cheekbones, mouth_slightly_open, "
         "no_beard, pointy_nose, smiling, straight_hair, wearing_earrings, wearing_lipstick, young")


def write_celeba_attr(path: Path) -> None:
    names = CELEBA_NAMES.split()
    rows = [f"{i}.png " + " ".join("1" if n in row else "-1" for n in names)
            for i, row in enumerate((CELEBA_ROW_0, CELEBA_ROW_1))]
    path.write_text(f"{len(rows)}\n{' '.join(names)}\n" + "\n".join(rows) + "\n")


def images(folder: Path, names, size=(64, 64)) -> list[Path]:
    folder.mkdir(exist_ok=True)
    out = []
    for i, name in enumerate(names):
        Image.new("RGB", size, (40 * i % 256, 100, 150)).save(folder / name)
        out.append(folder / name)
    return out


def test_filenames():
    assert cap.caption_from_filename("a_red-car (2).jpg") == "a red car"
    assert cap.caption_from_filename("IMG_1234.jpg") == ""
    assert cap.caption_from_filename("/x/golden retriever_003.png") == "golden retriever"


def test_attribute_table_as_the_celeba_lab_does(tmp_path):
    write_celeba_attr(tmp_path / "list_attr_celeba.txt")
    table = cap.read_attribute_table(tmp_path / "list_attr_celeba.txt")
    assert cap.attributes_to_caption(table["0.png"], "tags", prefix="celeba") == LAB_0
    sentence = cap.attributes_to_caption(table["1.png"], "sentence")
    assert sentence == ("a photo of a smiling young man with bags under eyes, big nose, brown hair, "
                        "high cheekbones, mouth slightly open and no beard")
    assert cap.attributes_to_caption(table["0.png"], "sentence").startswith("a photo of an attractive smiling young woman")
    csv_path = tmp_path / "attrs.csv"
    csv_path.write_text("image_id,Smiling,Male,Wearing_Hat\n7.jpg,1,-1,1\n")
    row = cap.read_attribute_table(csv_path)["7.jpg"]
    assert cap.attributes_to_caption(row, "sentence") == "a photo of a smiling woman, wearing a hat"


def test_tables(tmp_path):
    (tmp_path / "data.csv").write_text("image_path,caption\npokemon/0.png,a drawing of a green pokemon\n")
    assert cap.read_table(tmp_path / "data.csv") == {"0.png": "a drawing of a green pokemon"}
    (tmp_path / "t.json").write_text(json.dumps([{"file_name": "a.png", "text": "x"}]))
    assert cap.read_table(tmp_path / "t.json") == {"a.png": "x"}
    kohya = cap.read_table(FIXTURES / "metadata-example.json")
    assert kohya["1.jpg"].startswith("celeba, bags_under_eyes")
    with pytest.raises(Exception, match="no caption column"):
        (tmp_path / "bad.csv").write_text("image,words\na.png,x\n")
        cap.read_table(tmp_path / "bad.csv")


def test_identifiers_as_the_lecture_inserts_them():
    text = "a yellow and white stuffed shark with a big smile"
    assert cap.insert_identifier(text, "mychar4", "shark", "replace") == \
        "a yellow and white stuffed mychar4 with a big smile"
    assert cap.insert_identifier(text, "ohwx", "shark", "before") == \
        "a yellow and white stuffed ohwx shark with a big smile"
    assert cap.insert_identifier("a cartoon", "jisoo") == "jisoo, a cartoon"
    assert cap.insert_identifier("a cat", "ohwx", "shark", "before") == "ohwx, a cat"  # no class word
    assert cap.apply_template("a photo of {token} {class}, {caption}", "smiling", token="sks",
                              class_word="dog") == "a photo of sks dog, smiling"
    assert cap.apply_template("photo of {token} {class}", token="sks", class_word="dog") == "photo of sks dog"
    with pytest.raises(Exception, match="unknown placeholder"):
        cap.apply_template("{nope}")


def test_tag_helpers():
    text = "sks, red, blue, green, red, yellow"
    shuffled = cap.shuffle_tags(text, keep_tokens=1, seed=3)
    assert shuffled.split(", ")[0] == "sks" and sorted(shuffled.split(", ")) == sorted(text.split(", "))
    assert shuffled == cap.shuffle_tags(text, keep_tokens=1, seed=3)
    assert {cap.shuffle_tags(text, 1, seed=s) for s in range(10)} != {text}
    assert cap.dedupe_tags(text) == "sks, red, blue, green, yellow"
    assert cap.edit_tags(text, add=["new", "RED"], remove=["blue"]) == "sks, red, green, red, yellow, new"


def test_caption_folder_resumes_after_interruption(tmp_path):
    paths = images(tmp_path / "imgs", [f"{i}.png" for i in range(5)])
    calls = []

    def flaky(batch):
        calls.append([p.name for p in batch])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [f"caption {p.stem}" for p in batch]

    with pytest.raises(KeyboardInterrupt):
        cap.caption_folder(tmp_path / "imgs", flaky, batch_size=2)
    assert sorted(p.name for p in (tmp_path / "imgs").glob("*.txt")) == ["0.txt", "1.txt"]
    calls.clear()
    result = cap.caption_folder(tmp_path / "imgs", lambda b: [f"caption {p.stem}" for p in b], batch_size=2)
    assert result["written"] == 3 and result["already captioned"] == 2
    assert (tmp_path / "imgs" / "4.txt").read_text() == "caption 4\n"
    # jsonl: same resumability, one line per image
    r1 = cap.caption_folder(tmp_path / "imgs", lambda b: ["x" for _ in b], fmt="jsonl", batch_size=3)
    r2 = cap.caption_folder(tmp_path / "imgs", lambda b: ["y" for _ in b], fmt="jsonl")
    lines = [json.loads(x) for x in (tmp_path / "imgs" / "metadata.jsonl").read_text().splitlines()]
    assert r1["written"] == 5 and r2["written"] == 0 and len(lines) == 5
    assert lines[0] == {"file_name": "0.png", "text": "x"} and len(paths) == 5


def test_cli_sources(tmp_path, capsys):
    folder = tmp_path / "celeba"
    images(folder, ["0.png", "1.png", "2.png"])
    write_celeba_attr(tmp_path / "list_attr_celeba.txt")
    assert main(["data", "captions", str(folder), "--from", "csv", "--table", str(tmp_path / "list_attr_celeba.txt"),
                 "--attributes", "--token", "celeba"]) == 0
    assert (folder / "0.txt").read_text().strip() == LAB_0
    assert not (folder / "2.txt").exists() and "2.png" in capsys.readouterr().out  # not in the table: reported
    shark = tmp_path / "shark"
    images(shark, ["stuffed_shark_1.png", "cartoon shark.png"])
    assert main(["data", "captions", str(shark), "--from", "filenames", "--token", "ohwx", "--class-word",
                 "shark", "--identifier", "before"]) == 0
    assert (shark / "stuffed_shark_1.txt").read_text().strip() == "stuffed ohwx shark"
    assert main(["data", "captions", str(shark), "--from", "template", "--template", "a photo of {token} {class}",
                 "--token", "sks", "--class-word", "dog", "--overwrite", "--format", "jsonl"]) == 0
    line = json.loads((shark / "metadata.jsonl").read_text().splitlines()[0])
    assert line == {"file_name": "cartoon shark.png", "text": "a photo of sks dog"}
    assert main(["data", "captions", str(shark), "--from", "csv"]) == 2  # needs --table


def test_judge_captions_the_shapes_world(tmp_path):
    from stablekit.shapes.captions import parse_caption, render_dataset

    out = Path(render_dataset(tmp_path / "shapes", 12, seed=4))
    truth = json.loads((out / "metadata.json").read_text())
    for txt in out.glob("*.txt"):
        txt.unlink()
    assert main(["data", "captions", str(out), "--from", "judge"]) == 0
    agree = 0
    for item in truth["items"]:
        got = parse_caption((out / item["file"]).with_suffix(".txt").read_text())
        spec = item["spec"]
        agree += all(got.get(k) == spec[k] for k in ("shape", "color", "background", "size", "position"))
    assert agree >= 10, agree  # the judge reads rendered images almost perfectly
