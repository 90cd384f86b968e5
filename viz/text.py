"""Word-level comparison of two generated answers (e.g. the unpruned answer vs a pruned one)."""

from __future__ import annotations

import difflib
import html

DELETED_STYLE = "background:#fdd;color:#900;text-decoration:line-through"
INSERTED_STYLE = "background:#dfd;color:#060;text-decoration:none"


def word_diff_html(reference: str, other: str) -> str:
    """HTML fragment of `other` against `reference`: removed words in `<del>`, added words in `<ins>`.

    Words are whitespace-separated; every word is HTML-escaped, so model output cannot inject markup.
    Styles are inline so the fragment renders the same in any page.
    """
    parts = []
    for tag, ref_words, other_words in _opcodes(reference, other):
        if tag == "equal":
            parts.append(_escape(ref_words))
            continue
        if ref_words:
            parts.append(f'<del style="{DELETED_STYLE}">{_escape(ref_words)}</del>')
        if other_words:
            parts.append(f'<ins style="{INSERTED_STYLE}">{_escape(other_words)}</ins>')
    return f'<div class="word-diff">{" ".join(parts)}</div>'


def word_diff_counts(reference: str, other: str) -> tuple[int, int, int]:
    """`(same, removed, added)` word counts between `reference` and `other`."""
    same = removed = added = 0
    for tag, ref_words, other_words in _opcodes(reference, other):
        if tag == "equal":
            same += len(ref_words)
        else:
            removed += len(ref_words)
            added += len(other_words)
    return same, removed, added


def _opcodes(reference: str, other: str):
    """Yield `(tag, reference_words, other_words)` for each run of the word-level diff."""
    if not isinstance(reference, str) or not isinstance(other, str):
        raise ValueError("reference and other must be str")
    ref_words, other_words = reference.split(), other.split()
    # autojunk would treat frequent words ("the", "a") as junk in longer answers and misalign the diff.
    matcher = difflib.SequenceMatcher(None, ref_words, other_words, autojunk=False)
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        yield tag, ref_words[i0:i1], other_words[j0:j1]


def _escape(words: list[str]) -> str:
    return html.escape(" ".join(words))
