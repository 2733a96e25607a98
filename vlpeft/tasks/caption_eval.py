"""COCO caption metrics through ``pycocoevalcap`` (the coco-caption package the originals evaluate with).

``caption_scores(references, predictions)`` → ``{"cider": CIDEr-D, "bleu4": BLEU-4, "rouge_l": ROUGE-L,
"meteor": METEOR}`` (fractions, as the package returns them; VL-Adapter logs them ×100).

- Tokenisation: the package's ``PTBTokenizer`` (Stanford CoreNLP's PTB tokenizer, lower-cased, punctuation
  tokens dropped) runs a ``java`` subprocess. Where no ``java`` is on the PATH we use :func:`ptb_tokenize`, a
  Python tokenizer that follows the same rules on caption text (lower-casing, splitting off punctuation and
  clitics such as ``n't`` / ``'s``, then dropping the package's ``PUNCTUATIONS``); a test checks it against the
  Java tokenizer on the fixture captions. It differs on exotic Unicode symbols the Java lexer drops or rewrites
  (``〜``, ``¾`` → ``3/4``), never on plain English captions. ``tokenizer="ptb"`` forces Java, ``"python"`` the
  fallback.
- METEOR needs ``java`` too (``meteor-1.5.jar``): without it the ``meteor`` key is absent, never a made-up 0.
- CIDEr is pycocoevalcap's ``Cider``, which is CIDEr-D (σ = 6 length penalty, clipped counts, ×10), with the
  document frequencies computed over the evaluated references, as coco-caption does.
- SPICE is not computed (it downloads Stanford CoreNLP models at first use; VL-Adapter does not report it).
"""

from __future__ import annotations

import re
import shutil
from typing import Hashable, Mapping, Sequence

__all__ = ["PUNCTUATIONS", "caption_scores", "java_available", "ptb_tokenize", "tokenize_captions"]

# the package's list (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS), restated so the fallback needs no import
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])


def java_available() -> bool:
    return shutil.which("java") is not None


# PTB rules applied to captions: brackets become -LRB-/-RRB- style tokens, double quotes become
# `` / '' (dropped), clitics split off ("don't" → "do n't", "dog's" → "dog 's"), and every other punctuation mark
# is its own token, except inside numbers ("3.5", "1,000") and inside words joined by "-" or "/" (PTB keeps
# "t-shirt" and "and/or" whole).
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_TOKEN = re.compile(r"""
      \d+(?:[.,]\d+)+               # numbers with separators
    | \.\.\.                        # ellipsis
    | --                            # dash
    | \#+|\*+|=+                   # runs of one symbol stay one token ("##")
    | \w+(?:[-/]\w+)+               # hyphenated / slashed words
    | \w+(?=n't\b)                  # "do" of "don't"
    | n't\b
    | '(?:s|m|d|ll|re|ve)\b         # clitics
    | \w+
    | ``|''
    | \S                            # any other single mark
""", re.VERBOSE | re.IGNORECASE)


def ptb_tokenize(text: str) -> str:
    """One caption tokenised like ``PTBTokenizer(-lowerCase)`` followed by the package's punctuation removal."""
    text = text.replace("\n", " ")
    out = []
    for tok in _TOKEN.findall(text):
        if tok == '"':
            continue  # PTB turns it into `` or '' — both dropped
        # lower-casing happens before the package's filter, so "-LRB-" arrives as "-lrb-" and is kept (a quirk of
        # coco-caption we reproduce: its PUNCTUATIONS list spells the bracket tokens in upper case)
        tok = _BRACKETS.get(tok, tok).lower()
        if tok not in PUNCTUATIONS:
            out.append(tok)
    return " ".join(out)


def tokenize_captions(captions: Mapping[Hashable, Sequence[str]], tokenizer: str = "auto") -> dict:
    """``{id: [caption, ...]}`` → ``{id: [tokenised caption, ...]}`` with the Java PTB tokenizer or the fallback."""
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer={tokenizer!r}: choose 'auto', 'ptb' (Java) or 'python'")
    use_java = tokenizer == "ptb" or (tokenizer == "auto" and java_available())
    if use_java:
        if not java_available():
            raise RuntimeError("tokenizer='ptb' needs `java` on the PATH (the Stanford PTB tokenizer is a jar); "
                               "install a JRE or use tokenizer='python'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [ptb_tokenize(c) for c in v] for k, v in captions.items()}


def caption_scores(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
                   tokenizer: str = "auto", meteor: bool | None = None) -> dict[str, float]:
    """Corpus CIDEr-D, BLEU-4, ROUGE-L (and METEOR where Java exists) of one caption per image id.

    ``references``: image id → its reference captions; ``predictions``: image id → the generated caption. Both
    must cover the same ids. ``meteor``: None = when Java exists; True without Java raises.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ModuleNotFoundError as e:  # pragma: no cover - it is a requirement
        raise ModuleNotFoundError("caption metrics need pycocoevalcap: pip install pycocoevalcap") from e
    ref_ids, pred_ids = set(references), set(predictions)
    if not ref_ids:
        raise ValueError("caption_scores: no image to score (empty references)")
    if ref_ids != pred_ids:
        missing, extra = sorted(ref_ids - pred_ids, key=str), sorted(pred_ids - ref_ids, key=str)
        raise ValueError(f"caption_scores: predictions and references cover different images "
                         f"({len(missing)} without a prediction, first {missing[:5]}; {len(extra)} without "
                         f"references, first {extra[:5]})")
    empty = [k for k, v in references.items() if not v]
    if empty:
        raise ValueError(f"caption_scores: {len(empty)} images have no reference caption (first {empty[:5]})")
    gts = tokenize_captions({k: list(v) for k, v in references.items()}, tokenizer)
    res = tokenize_captions({k: [str(v)] for k, v in predictions.items()}, tokenizer)
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out["bleu4"] = float(bleu[3])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if meteor is None:
        meteor = java_available()
    if meteor:
        if not java_available():
            raise RuntimeError("METEOR needs `java` on the PATH (meteor-1.5.jar); install a JRE or pass meteor=False")
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            _close_meteor(scorer)
    return out


def _close_meteor(scorer) -> None:
    # the package only closes its Java process in __del__; close it now so no subprocess outlives the call
    proc = getattr(scorer, "meteor_p", None)
    if proc is None:
        return
    # never block on the package's lock: its compute_score leaves it held when it raises (no try/finally)
    held = scorer.lock.acquire(blocking=False)
    try:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.kill()
        proc.wait()  # the package's __del__ later closes and kills again: both are no-ops then
    finally:
        if held:
            scorer.lock.release()
