"""A1111 prompt syntax and 75-token chunking (no model needed)."""
import pytest

from stablekit.prompts.chunks import Chunk, frame_chunk, split_chunks
from stablekit.prompts.parse import extract_extra_networks, parse_prompt_attention

# The examples of A1111's parse_prompt_attention docstring, plus the cases it handles implicitly.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

MORE_CASES = [
    ("", [("", 1.0)]),
    ("((word))", [("word", 1.2100000000000002)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word : 1.3 )", [("word ", 1.3)]),  # spaces around the weight (A1111 1.6+)
    ("(word:-0.5)", [("word", -0.5)]),
    ("\\\\ back", [("\\ back", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
    ("a)b]", [("a)b]", 1.0)]),  # closing brackets with nothing open are text
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("x:1.2)", [("x:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # A1111 crashes on float("1.2.3"); we keep it as text
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a BREAKb", [("a BREAKb", 1.0)]),  # only the whole word
    ("a break b", [("a break b", 1.0)]),  # only upper case
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # A1111 quirk, kept
    # Prompt editing / alternation are not expanded; read as attention syntax, never an error.
    ("[cat:dog:0.5]", [("cat:dog:0.5", 1 / 1.1)]),
    ("[cat|dog]", [("cat|dog", 1 / 1.1)]),
    ("a AND b", [("a AND b", 1.0)]),
]


@pytest.mark.parametrize("text,expected", A1111_EXAMPLES + MORE_CASES)
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


def test_extract_extra_networks():
    text, nets = extract_extra_networks("a cozy cabin, <lora:watercolor_style:0.8>, <hypernet:h:te=0.5>")
    assert text == "a cozy cabin, , "
    assert [(n.kind, n.name) for n in nets] == [("lora", "watercolor_style"), ("hypernet", "h")]
    assert nets[0].positional == ("watercolor_style", "0.8") and nets[1].named == {"te": "0.5"}
    assert extract_extra_networks("no tags <here>") == ("no tags <here>", [])


# A fake tokenizer: one id per character, "," -> 0, so token counts are easy to read.
def _tokenize(texts):
    return [[0 if ch == "," else ord(ch) for ch in t if ch != " "] for t in texts]


def _split(prompt, backtrack=20):
    return split_chunks(parse_prompt_attention(prompt), _tokenize, comma_id=0, backtrack=backtrack)


def test_chunks_fill_75_and_start_new_ones():
    chunks = _split("x" * 80)
    assert [len(c.tokens) for c in chunks] == [75, 5]
    assert [len(c.tokens) for c in _split("x" * 150)] == [75, 75]
    assert [len(c.tokens) for c in _split("")] == [0]


def test_comma_backtracking_moves_the_last_phrase():
    # comma at index 70, then 10 more tokens: the 4 after the comma that fit move on, as A1111.
    chunks = _split("x" * 70 + "," + "y" * 10)
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == 0 and set(chunks[1].tokens) == {ord("y")}
    # comma further back than 20 tokens: no back-tracking
    assert [len(c.tokens) for c in _split("x" * 50 + "," + "y" * 30)] == [75, 6]
    assert [len(c.tokens) for c in _split("x" * 70 + "," + "y" * 10, backtrack=0)] == [75, 6]


def test_break_and_weights_in_chunks():
    chunks = _split("ab BREAK (c)")
    assert [c.tokens for c in chunks] == [[97, 98], [99]]
    assert chunks[1].weights == [1.1]
    assert len(_split("BREAK a")) == 2  # leading BREAK: an empty first chunk, as A1111
    assert len(_split("a BREAK")) == 1  # trailing BREAK adds nothing


def test_frame_chunk_pads_after_eos():
    ids, weights = frame_chunk(Chunk([5, 6], [1.5, 1.0]), bos=1, eos=2, pad=0)
    assert len(ids) == len(weights) == 77
    assert ids[:5] == [1, 5, 6, 2, 0] and set(ids[4:]) == {0}
    assert weights[:4] == [1.0, 1.5, 1.0, 1.0]
