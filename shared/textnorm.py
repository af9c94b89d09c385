"""Word-level text normalisation for near-duplicate keys and grounding checks.

Both forms apply Unicode NFKC, turn every run of non-alphanumeric characters (and ``_``) into one
space and trim, so "New-York!" and "new york" compare equal. They differ only in case handling,
and each caller's stored output depends on its own: :func:`normalize_text` lower-cases (EDDE's
dedup keys), :func:`normalize_text_folded` case-folds ("Straße" ~ "strasse"; the grounding judge).
The reward's string rule (``shared/reward.py``) is a different, documented normalisation.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """NFKC, ``str.lower``, non-word runs → one space, trimmed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def normalize_text_folded(text: str) -> str:
    """NFKC, ``str.casefold``, non-word runs → one space, trimmed."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())
