"""One phone inventory for the synthetic corpora: CMU's 39 phones plus ``sil``.

The alignments keep each engine's own names (`birq_fs2.data.alignments`): flite speaks
lower-case CMU phones, espeak-ng its mnemonics (``D``, ``@``, ``oU``, ...), and the two
sets differ. The phone probes (`birq_fs2.probe`) need one set, so every name is mapped
here to the 39 phones of the CMU dictionary as TIMIT/Kaldi fold them (no stress; ``ax``,
``ix``, ``el``, ``dx`` folded into ``ah``, ``ih``, ``l``, ``t``) and ``sil``.

The espeak-ng column follows the phoneme tables of its English voices (en-us, en-gb and
the accents the synthesiser draws): vowel qualities go to their nearest CMU vowel
(British LOT ``0`` -> ``aa``, ``a#`` (BATH) -> ``ae``, syllabic ``@L`` -> ``l``, the
r-coloured ``3`` / ``3ː`` -> ``er``, the centring diphthongs ``i@`` / ``e@`` / ``U@`` to
their first element), flaps and dental variants of ``t`` to ``t``. Names that are not a
phone of either engine's English set (espeak-ng's ``;`` palatalisation mark, the glottal
stop) map to None: the probes leave those frames out and report how many there were.
The two engines share the lower-case consonant names (``d``, ``t``, ``s``, ...) with the
same meaning, so one table serves both.
"""

from __future__ import annotations

SILENCE = "sil"

CMU_PHONES = (
    "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g",
    "hh", "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t",
    "th", "uh", "uw", "v", "w", "y", "z", "zh",
)  # fmt: skip
"""The 39 phones of the inventory, silence aside."""

PHONES = (SILENCE, *CMU_PHONES)
"""The probes' frame classes, in a fixed order (index = class id)."""

_CMU_FOLDS = {
    "ax": "ah", "axr": "er", "ix": "ih", "ux": "uw", "el": "l", "em": "m", "en": "n",
    "nx": "n", "dx": "t", "hv": "hh", "pau": SILENCE, "h#": SILENCE,
}  # fmt: skip

_ESPEAK = {
    # vowels
    "@": "ah", "@2": "ah", "@5": "ah", "V": "ah", "@L": "l", "3": "er", "3ː": "er", "3:": "er",
    "0": "aa", "A": "aa", "Aː": "aa", "A:": "aa", "A@": "aa", "a": "ae", "a#": "ae",
    "aa": "aa", "E": "eh", "e": "eh", "e@": "eh", "eI": "ey", "I": "ih", "I#": "ih",
    "I2": "ih", "IR": "ih", "i@": "ih", "i@3": "ih", "i": "iy", "iː": "iy", "i:": "iy",
    "O": "ao", "Oː": "ao", "O:": "ao", "O@": "ao", "o@": "ao", "OI": "oy", "o": "ow",
    "oU": "ow", "U": "uh", "U@": "uh", "u": "uw", "uː": "uw", "u:": "uw", "aI": "ay",
    "aI2": "ay", "aI3": "ay", "aI@": "ay", "aU": "aw",
    # consonants that differ from CMU's names
    "D": "dh", "T": "th", "S": "sh", "Z": "zh", "N": "ng", "tS": "ch", "dZ": "jh", "h": "hh",
    "j": "y", "r-": "r", "t#": "t", "t[": "t", "n-": "n", "l-": "l", "m-": "m",
    ";": None, "?": None,
}  # fmt: skip

_TABLE: dict[str, str | None] = {
    **{p: p for p in PHONES},
    **_CMU_FOLDS,
    **_ESPEAK,
}


def to_cmu(phone: str) -> str | None:
    """The inventory phone of an alignment's phone name (either engine), or None for a
    name that is not a phone (see the module docstring); a name no table knows is None too."""
    return _TABLE.get(phone)


PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
