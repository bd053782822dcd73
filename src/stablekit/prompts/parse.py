"""A1111 prompt syntax: attention weights, BREAK and extra-network tags.

Follows the behaviour of AUTOMATIC1111 stable-diffusion-webui `modules/prompt_parser.py`
(`parse_prompt_attention`) and `modules/extra_networks.py` (`parse_prompt`), including their
quirks, so that a prompt copied from an A1111 infotext gives the same weights here:

- `(text)` multiplies by 1.1, `[text]` divides by 1.1, `(text:1.3)` (or `(text: 1.3 )`, as in
  A1111 1.6+) multiplies by 1.3; nesting multiplies (`((a))` -> 1.21). Factors are applied in
  the order the brackets close, so the floats are bit-identical to A1111's
  (`(((house:1.3))` -> 1.5730000000000004).
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are literal characters; a lone backslash is dropped.
- Brackets left open at the end still apply, from where they opened to the end of the prompt;
  a closing bracket with nothing open is plain text.
- `BREAK` (a whole word, upper case) becomes the marker ("BREAK", -1.0): the encoder starts a
  new 75-token chunk there. A1111 multiplies the marker like any text, so a BREAK inside
  brackets (`(a BREAK b)`) stops being a marker and is encoded as the word "break" with a
  negative weight; we keep that quirk so A1111 prompts reproduce.
- Prompt editing `[from:to:when]` and alternation `[a|b]` are expanded before this, per step,
  by `stablekit.prompts.schedule`; given to this function directly they are read as attention
  syntax (`[a:b:0.5]` -> "a:b:0.5" at weight 1/1.1), never an error. `AND` (composable
  diffusion) is plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)

# One match per syntactic unit. The order of the alternatives matters: escapes before lone
# backslashes, ":<number>)" before a bare ":".
_UNIT = re.compile(
    r"""
      \\[()\[\]\\]                    # escaped bracket or backslash -> the literal character
    | \\                              # lone backslash -> dropped
    | [(\[]                           # opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)  # ":1.3)" / ": 1.3 )" closes a round bracket with a weight
    | [)\]]                           # closing bracket
    | [^\\()\[\]:]+                   # plain text
    | :                               # a colon that starts no weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs, as A1111's `parse_prompt_attention` does.

    Adjacent runs with equal weight are merged; an empty prompt gives [("", 1.0)]. BREAK
    appears as the run ("BREAK", -1.0).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    runs: list[list] = []  # [text, weight], weights change while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _UNIT.finditer(text):
        unit = match.group(0)
        weight = _number(match.group("weight"))
        if unit[0] == "\\":
            runs.append([unit[1:], 1.0])
        elif unit == "(":
            open_round.append(len(runs))
        elif unit == "[":
            open_square.append(len(runs))
        elif weight is not None and open_round:
            scale(open_round.pop(), weight)
        elif unit == ")" and open_round:
            scale(open_round.pop(), ROUND_FACTOR)
        elif unit == "]" and open_square:
            scale(open_square.pop(), SQUARE_FACTOR)
        else:  # plain text, or a bracket/weight with nothing to close
            for i, part in enumerate(_BREAK.split(unit)):
                if i:
                    runs.append(list(BREAK_MARKER))
                runs.append([part, 1.0])

    for start in open_round:
        scale(start, ROUND_FACTOR)
    for start in open_square:
        scale(start, SQUARE_FACTOR)

    merged: list[tuple[str, float]] = []
    for part, weight in runs or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + part, weight)
        else:
            merged.append((part, weight))
    return merged


def is_break(run: tuple[str, float]) -> bool:
    """True for the BREAK marker run (a chunk boundary)."""
    return run[0] == BREAK_MARKER[0] and run[1] == BREAK_MARKER[1]


def _number(text: str | None) -> float | None:
    # A1111 calls float() unguarded and crashes on "(a:1.2.3)"; we read it as plain text.
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ExtraNetwork:
    """One `<kind:arg1:arg2...>` tag, e.g. `<lora:watercolor:0.8>` -> kind "lora", items ("watercolor", "0.8")."""

    kind: str
    items: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.items[0]

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(i for i in self.items if "=" not in i)

    @property
    def named(self) -> dict[str, str]:
        return dict(i.split("=", 1) for i in self.items if "=" in i)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove `<lora:...>`-style tags from a prompt, as A1111 does before encoding.

    Returns the prompt with each tag replaced by "" (surrounding commas and spaces stay, as in
    A1111) and the tags in order of appearance.
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        found.append(ExtraNetwork(match.group(1), tuple(match.group(2).split(":"))))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt with its extra-network tags taken out, parsed once where the prompt enters.

    text: what is encoded (tags replaced by "", as A1111); networks: the `<kind:...>` tags in
    order. PromptEncoder methods accept a ParsedPrompt or a plain string (parsed on the spot).
    """

    text: str
    networks: tuple[ExtraNetwork, ...] = ()

    @classmethod
    def parse(cls, prompt: "str | ParsedPrompt") -> "ParsedPrompt":
        if isinstance(prompt, ParsedPrompt):
            return prompt
        text, networks = extract_extra_networks(prompt or "")
        return cls(text, tuple(networks))
