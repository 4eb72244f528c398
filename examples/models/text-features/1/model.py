"""The Python step of the example sentiment pipeline: word counts from a small sentiment lexicon.

Each text (BYTES, UTF-8, any language the lexicon covers: English, French, German and
Spanish) becomes two numbers: how many of its words are positive, and how many negative.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from meshserve.runtimes.python import Model


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


POSITIVE = _words("""
good great excellent love loved lovely happy wonderful best fine nice perfect amazing like liked fast
bon bonne excellent excellente aime adore heureux heureuse parfait rapide super
gut toll ausgezeichnet liebe glücklich perfekt schnell super
bueno buena excelente encanta feliz perfecto perfecta rápido genial
""")
NEGATIVE = _words("""
bad terrible awful hate hated sad worst poor slow broken wrong angry never disappointing disappointed
mauvais mauvaise terrible déteste triste pire lent lente cassé décevant
schlecht schrecklich hasse traurig schlimmste langsam kaputt enttäuschend
malo mala terrible odio triste peor lento lenta roto decepcionante
""")
WORD = re.compile(r"\w+", re.UNICODE)


class TextFeatures(Model):
    """pos, neg (FP64): counts of lexicon words in each text."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
                 for t in np.asarray(inputs["text"]).ravel()]
        words = [WORD.findall(text.lower()) for text in texts]
        return {
            "pos": np.array([sum(w in POSITIVE for w in ws) for ws in words], dtype=np.float64),
            "neg": np.array([sum(w in NEGATIVE for w in ws) for ws in words], dtype=np.float64),
        }
