"""Caption nouns that name a dataset class, found without a tagger model.

The DiffSeg demo (google/diffseg ``diffseg.ipynb``, cell "3. Generate Segmentation
Masks") takes the nouns of a BLIP caption with NLTK (``word_tokenize`` + ``pos_tag``,
tags ``NN*``). NLTK's tagger needs a data download, and a noun that names no dataset class
cannot be scored; so here the "nouns" are the caption's word spans that equal a name of a
class (its own name, its OVSS synonyms, user synonyms), matched whole-word and
case-insensitively, with simple plural forms (``dogs``, ``buses``, ``ponies``, ``men``,
``people``). Longer names win over shorter ones at the same position ("potted plant"
before "plant"), a class's own name over another class's synonym, then the lower index.

Pure string code: no I/O, no model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

_WORD = re.compile(r"[A-Za-z0-9]+")
#: irregular plurals of common class words (singular -> plural)
_IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "mouse": "mice",
              "foot": "feet", "tooth": "teeth", "goose": "geese", "leaf": "leaves", "knife": "knives",
              "shelf": "shelves", "wolf": "wolves"}


@dataclass(frozen=True)
class CaptionNoun:
    """A caption span that names class ``class_index``.

    text: the span exactly as written in the caption (the prompt word whose tokens are
    read); name: the class name or synonym it matched.
    """

    text: str
    class_index: int
    name: str


def plural_forms(word: str) -> Tuple[str, ...]:
    """``word`` and its regular (and a few irregular) plural forms, lower case."""
    word = word.lower()
    forms = {word, word + "s", word + "es"}
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    return tuple(sorted(forms))


def class_vocabulary(
    class_names: Sequence[str],
    dataset_synonyms: Optional[Sequence[Sequence[str]]] = None,
    extra: Optional[Mapping[str, Sequence[str]]] = None,
) -> List[List[str]]:
    """The names of each class: its own name first, then its dataset synonyms, then the
    user's ``extra`` names ({class name: [names]}); duplicates dropped.

    Raises ValueError when ``dataset_synonyms`` does not have one list per class or
    ``extra`` names a class the dataset does not have.
    """
    names = [str(n).strip() for n in class_names]
    if dataset_synonyms is not None and len(dataset_synonyms) != len(names):
        raise ValueError(f"{len(dataset_synonyms)} synonym lists for {len(names)} classes")
    unknown = sorted(set(extra or {}) - set(names))
    if unknown:
        raise ValueError(f"method.synonyms names classes the dataset does not have: {', '.join(unknown)}")
    vocab = []
    for c, name in enumerate(names):
        entries = [name, *(dataset_synonyms[c] if dataset_synonyms is not None else []), *((extra or {}).get(name, []))]
        vocab.append(list(dict.fromkeys(e.strip() for e in entries if e and e.strip())))
    return vocab


def match_caption_nouns(
    caption: str, vocabulary: Sequence[Sequence[str]], allowed: Optional[Collection[int]] = None
) -> List[CaptionNoun]:
    """The spans of ``caption`` naming a class of ``vocabulary`` (see the module doc), in
    caption order; a span that occurs twice is listed once. ``allowed``: only these class
    indices (None: all)."""
    words = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(caption)]
    # (name tokens with the last token's plural forms, rank, class, name); rank orders
    # longer names first, then a class's own name before synonyms, then the class index
    patterns: List[Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[int, int, int], int, str]] = []
    for c, names in enumerate(vocabulary):
        if allowed is not None and c not in allowed:
            continue
        for k, name in enumerate(names):
            tokens = tuple(t.lower() for t in _WORD.findall(name))
            if tokens:
                patterns.append((tokens[:-1], plural_forms(tokens[-1]), (-len(tokens), 0 if k == 0 else 1, c), c, name))
    patterns.sort(key=lambda p: p[2])
    found: Dict[str, CaptionNoun] = {}
    i = 0
    while i < len(words):
        for head, last_forms, _, c, name in patterns:
            n = len(head) + 1
            if i + n > len(words):
                continue
            if tuple(w for w, _, _ in words[i:i + n - 1]) == head and words[i + n - 1][0] in last_forms:
                text = caption[words[i][1]:words[i + n - 1][2]]
                found.setdefault(text.lower(), CaptionNoun(text, c, name))
                i += n
                break
        else:
            i += 1
    return list(found.values())
