"""Stop strings as one Aho-Corasick automaton: per appended character O(1) amortized.

Pure Python (no torch). The automaton is built once per ``SamplingParams`` (``n`` samples share
it); each detokenizer keeps only its current state. The state is the longest suffix of the text
so far that is a prefix of some stop string, which gives both answers the detokenizer needs per
token without rescanning: which stop strings end in the new text, and how much of the tail must
be held back because it may still become a stop string. The cost per token is linear in the new
text (plus the matches found), whatever the number or length of the stop strings; the old scan
re-checked every prefix of every stop string on every token (quadratic in the longest stop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class StopMatch:
    """A stop string ends in the scanned text: it is ``text[start:end]``."""

    start: int
    end: int


class StopMatcher:
    """The automaton over a fixed set of (non-empty) stop strings."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = list(dict.fromkeys(stops))
        self._goto: list[dict[str, int]] = [{}]
        self._depth = [0]
        self._terminal = [False]
        for stop in self.stops:
            self._insert(stop)
        n = len(self._goto)
        self._fail = [0] * n
        self._out = [-1] * n  # the nearest terminal node on the failure chain (not itself)
        self._hold = [0] * n  # the longest *proper* stop prefix that is a suffix here
        self._link()

    def _insert(self, stop: str) -> None:
        node = 0
        for ch in stop:
            nxt = self._goto[node].get(ch)
            if nxt is None:
                nxt = len(self._goto)
                self._goto[node][ch] = nxt
                self._goto.append({})
                self._depth.append(self._depth[node] + 1)
                self._terminal.append(False)
            node = nxt
        self._terminal[node] = True

    def _link(self) -> None:
        """Failure links in breadth-first order (a node's link is shallower than the node)."""
        queue = deque(self._goto[0].values())
        while queue:
            node = queue.popleft()
            fail = self._fail[node]
            self._out[node] = fail if self._terminal[fail] else self._out[fail]
            # a node with children is a proper prefix of some stop; a leaf is only a whole stop
            self._hold[node] = self._depth[node] if self._goto[node] else self._hold[fail]
            for ch, child in self._goto[node].items():
                f = fail
                while f and ch not in self._goto[f]:
                    f = self._fail[f]
                target = self._goto[f].get(ch, 0)
                self._fail[child] = target if target != child else 0
                queue.append(child)

    def advance(self, state: int, ch: str) -> int:
        """The state after appending one character."""
        goto, fail = self._goto, self._fail
        while state and ch not in goto[state]:
            state = fail[state]
        return goto[state].get(ch, 0)

    def scan(
        self, state: int, text: str, offset: int, collect: bool
    ) -> tuple[int, list[StopMatch]]:
        """Feed ``text`` (which starts at ``offset`` in the whole text); return the new state
        and, if ``collect``, every stop string that ends inside ``text``."""
        matches: list[StopMatch] = []
        for i, ch in enumerate(text):
            state = self.advance(state, ch)
            if not collect:
                continue
            end = offset + i + 1
            node = state if self._terminal[state] else self._out[state]
            while node > 0:
                length = self._depth[node]
                matches.append(StopMatch(end - length, end))
                node = self._out[node]
        return state, matches

    def held_back(self, state: int) -> int:
        """Characters at the end of the text that are a proper prefix of some stop string."""
        return self._hold[state]
