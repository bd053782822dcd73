"""A1111 prompt editing `[from:to:when]` and alternation `[a|b]`: which text applies at which step.

Follows A1111 `modules/prompt_parser.py` (`get_learned_conditioning_prompt_schedules`, v1.6+):

- `[from:to:when]` uses `from` up to step `when`, then `to`; `[to:when]` adds `to` after `when`;
  `when` with a "." is a fraction of the steps (`0.25`), without one a step number.
- `[a|b|c]` cycles a, b, c, a, ... one step each; empty options are allowed (`[fe|]male`).
- Anything else (weights, BREAK, escapes) stays as text for `parse_prompt_attention`.
- A prompt the grammar cannot read (a `|` outside brackets, a trailing lone backslash) is used
  unchanged for every step, as in A1111; stray brackets and colons at the top level are text.

A1111 parses with a lark Earley grammar; this is a small recursive-descent parser for the same
grammar that prefers the structured reading where both a structured and a stray-bracket reading
exist (as lark resolves them). It agrees with lark on A1111's doctest examples and on a
randomised comparison (see tests/test_prompts_schedule.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# A1111's `plain` terminal: anything but \ [ ] ( ) : | , or a backslash escape (not of a newline).
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# lark's SIGNED_NUMBER, with the optional whitespace on both sides and the closing bracket.
_WHEN = re.compile(r"(\s*)([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)(\s*)\]")
_STRAY = "[]():"


@dataclass
class _Scheduled:
    before: list | None
    after: list
    when_text: str
    start: int = 0  # position of its "["
    when: int = 0  # the step it switches after, set by prompt_schedule


@dataclass
class _Alternate:
    options: list[list]


class _Fail(Exception):
    pass


class _Stray(str):
    """A top-level bracket or colon that belongs to no construct (kept as text)."""


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.depth = 0  # nesting inside bracket constructs; stray brackets only at depth 0
        self.dissolved: set[int] = set()  # top-level "[" positions read as stray text

    def parse(self) -> list:
        """Top level: stray brackets and colons become text.

        lark's Earley parser, resolving ambiguity, reads a top-level [from:to:when] that is
        directly followed by an even number of stray characters as stray text itself
        ("[b:3]((" stays text, "[b:3](" and "[b:3](((" are edits). We reproduce that rule:
        parse, dissolve such a construct, parse again.
        """
        while True:
            nodes = self._top()
            for i, node in enumerate(nodes):
                if isinstance(node, _Scheduled):
                    run = 0
                    while i + 1 + run < len(nodes) and isinstance(nodes[i + 1 + run], _Stray):
                        run += 1
                    if run and run % 2 == 0:
                        self.dissolved.add(node.start)
                        break
            else:
                return nodes

    def _top(self) -> list:
        nodes, pos, text = [], 0, self.text
        while True:
            more, pos = self._sequence(pos)
            nodes += more
            if pos >= len(text):
                return nodes
            if text[pos] not in _STRAY:  # "|" or a lone backslash: no parse at all
                raise _Fail
            nodes.append(_Stray(text[pos]))
            pos += 1

    def _sequence(self, pos: int) -> tuple[list, int]:
        """A `prompt`: plain text and bracket constructs, up to a character it cannot take."""
        nodes, text = [], self.text
        while pos < len(text):
            plain = _PLAIN.match(text, pos)
            if plain:
                nodes.append(plain.group(0))
                pos = plain.end()
                continue
            if text[pos] not in "([" or (self.depth == 0 and pos in self.dissolved):
                break
            self.depth += 1
            try:
                node, pos = (self._round if text[pos] == "(" else self._square)(pos)
            except _Fail:
                if self.depth > 1:
                    raise
                break  # at the top level the bracket is stray text
            finally:
                self.depth -= 1
            nodes.append(node)
        return nodes, pos

    def _expect(self, pos: int, char: str) -> int:
        if pos >= len(self.text) or self.text[pos] != char:
            raise _Fail
        return pos + 1

    def _round(self, pos: int) -> tuple[list, int]:
        # "(" prompt ")" | "(" prompt ":" prompt ")": kept as text with its brackets.
        first, pos = self._sequence(pos + 1)
        nodes = ["(", *first]
        if pos < len(self.text) and self.text[pos] == ":":
            second, pos = self._sequence(pos + 1)
            nodes += [":", *second]
        pos = self._expect(pos, ")")
        return nodes + [")"], pos

    def _square(self, pos: int) -> tuple[object, int]:
        text, start = self.text, pos
        first, pos = self._sequence(pos + 1)
        char = text[pos] if pos < len(text) else ""
        if char == "]":  # "[" prompt "]": emphasis, kept as text
            return ["[", *first, "]"], pos + 1
        if char == "|":
            options = [first]
            while pos < len(text) and text[pos] == "|":
                option, pos = self._sequence(pos + 1)
                options.append(option)
            pos = self._expect(pos, "]")
            return _Alternate(options), pos
        if char != ":":
            raise _Fail
        when = _WHEN.match(text, pos + 1)
        if when:  # "[" prompt ":" when "]"
            return _Scheduled(None, first, when.group(2), start), when.end()
        second, pos = self._sequence(pos + 1)
        if pos >= len(text) or text[pos] != ":":
            raise _Fail
        when = _WHEN.match(text, pos + 1)
        if not when:
            raise _Fail
        return _Scheduled(first, second, when.group(2), start), when.end()


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False) -> list[tuple[int, str]]:
    """[(last_step, text)] for each span of sampling steps over which the prompt text is constant.

    Steps count from 1; the last entry ends at `steps` (or `hires_steps` for a hires-fix pass,
    where A1111 shifts whole-number steps by `steps` and fractions by 1.0).
    use_old_scheduling: A1111's "use old prompt editing timelines" (values < 1 are fractions).
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset = 0, 0.0
    else:
        int_offset, float_offset, steps = steps, 1.0, hires_steps
    try:
        tree = _Parser(prompt).parse()
    except _Fail:
        return [(steps, prompt)]
    bounds = {steps}
    for node in _walk(tree):
        if isinstance(node, _Alternate):
            bounds.update(range(1, steps + 1))
        else:
            value = float(node.when_text)
            if use_old_scheduling:
                value = value * steps if value < 1 else value
            elif "." in node.when_text:
                value = (value - float_offset) * steps
            else:
                value = value - int_offset
            node.when = min(steps, int(value))
            if node.when >= 1:
                bounds.add(node.when)
    return [(step, _text_at(tree, step)) for step in sorted(bounds)]


def at_step(schedule: list[tuple[int, object]], step: int):
    """The entry of a schedule in force at 0-based sampler step `step`.

    As A1111's `reconstruct_cond_batch`: the first entry whose last step is >= step, where the
    sampler counts from 0 and the schedule from 1 (so `[a:b:3]` keeps `a` for steps 0..3, and
    `[a|b]` gives a, a, b, a, b, ... - A1111's own off-by-one, kept for identical images).
    """
    for end, value in schedule:
        if step <= end:
            return value
    return schedule[-1][1]


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, list):
            yield from _walk(node)
        elif isinstance(node, _Scheduled):
            yield node
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _text_at(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_text_at(node, step))
        elif isinstance(node, _Scheduled):
            chosen = (node.before or []) if step <= node.when else node.after
            out.append(_text_at(chosen, step))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)
