"""VQA answer normalisation, as the official VQA evaluation defines it.

One module for everything that compares answers: the arrow writers (label vocabulary, soft scores, GQA labels)
and the official VQA scorer :mod:`vlpeft.evaluate` (``process_punctuation`` / ``process_digit_article``). The
in-training ``vqa_score`` (``vlpeft.tasks.metrics.VQAScore``) does not call it: it reads the converter's soft
targets, which were built with :func:`normalize_word` — a proxy of the official number (see
:mod:`vlpeft.evaluate`). The outputs must equal the official evaluation's because they define the 3129-answer
vocabulary. Two quirks of the official code are kept on purpose (seeds.md §2.2.1, §8.4 item 30):

* its period regex carries a look-behind typo (``(?!<=\\d)``, a look-*ahead* that never fires), so every ``.``
  not followed by a digit is removed;
* ``re.UNICODE`` (= 32) is passed as the ``count`` argument of ``re.sub``, so at most 32 periods are removed.

Unlike the official code, nothing here mutates module state (the original inserts every seen word into its
number map).
"""

from __future__ import annotations

import re
from types import MappingProxyType

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "normalize_word",
    "prep_ans",
    "process_digit_article",
    "process_punctuation",
]

# Characters the evaluation treats as punctuation ("." has its own rule below).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

NUMBER_WORDS = MappingProxyType({
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
})

ARTICLES = frozenset({"a", "an", "the"})

# Apostrophe-less spellings → the spelling the evaluation uses. Keys containing capitals can never match (words
# are lower-cased first) and the odd "somebody'd" → "somebodyd" entry is the official table's; both are kept so
# the outputs stay identical.
CONTRACTIONS = MappingProxyType({
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
})

# A comma between two digits ("1,000") switches every punctuation mark from "replace by space" to "delete".
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
# A period not followed by a digit (see the module docstring for why it is written this way).
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # the official code's re.UNICODE-as-count


def process_punctuation(text: str) -> str:
    """Punctuation step of the official evaluation (no lower-casing, no comma deletion)."""
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # the decision looks at the *original* string, the edit applies to the running result
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Lower-case, number words → digits, drop articles, restore contractions, single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_word(text: str) -> str:
    """ViLT's ``normalize_word``: punctuation, periods, digits/articles/contractions, then every comma removed."""
    return process_digit_article(process_punctuation(text)).replace(",", "")


def prep_ans(text: str) -> str:
    """OpenVQA's ``prep_ans`` (used for GQA labels); the same steps as :func:`normalize_word`."""
    return normalize_word(text)
