"""Text corpora for language modelling, loaded whole onto the training device.

    python launch.py +experiment=table2 scale=smoke                 # dataset=synthetic_text
    python launch.py +experiment=table2 dataset.root=/data/ptb      # /data/ptb/ptb.train.txt ...

A corpus is three token streams (train, valid, test: int64 tensors of word ids) and a
vocabulary. The training loop cuts each stream into ``batch_size`` parallel streams and walks
through them in windows (back-propagation through time); nothing is shuffled.

Penn Treebank (``dataset=ptb``): the Mikolov pre-processed text files (10,000 words, ``<unk>``
for the rest, one sentence per line), as used by AWD-LSTM (Merity et al.) and by Summers &
Dinneen (2021). ``dataset.root`` holds ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (the
names in ``simple-examples/data/``) or ``train.txt``, ``valid.txt``, ``test.txt`` (the names
AWD-LSTM's ``getdata.sh`` gives them in ``data/penn/``); ``root/penn`` and ``root/ptb`` are looked
in too. Each line is split on whitespace and ``<eos>`` is appended (also to an empty line), as
AWD-LSTM's ``data.py`` does. The vocabulary is the training file's words in order of first
appearance; a validation or test word outside it becomes ``<unk>`` (an error if there is no
``<unk>``). ``train_size`` / ``valid_size`` / ``test_size`` keep the first k tokens.

Synthetic text (``dataset=synthetic_text``, the default corpus for language modelling; no
download): a hidden Markov "grammar" generated from ``dataset.data_seed`` alone, with its own
CPU generator per part (grammar, train, valid, test; seed = SHA-256 of
``nondet.text/synthetic/<data_seed>/<part>``), never the global RNG:

1. Vocabulary: ``vocab_size`` words, id 0 = ``<eos>``, ids 1.. = ``w1``, ``w2``, ...
2. Grammar, S = ``hidden_states`` states: a start distribution over states, Dirichlet(1); per
   state, ``BRANCHING`` successor states drawn without replacement with Dirichlet(1) weights;
   per state, an emission set of max(2, round(``EMISSION_FRACTION`` * (V - 1))) words drawn
   without replacement, with Zipf weights proportional to 1 / rank^``ZIPF_EXPONENT`` (rank =
   order of drawing); per state, an end-of-sentence probability U(0, 2 / ``sentence_length``).
   Dirichlet(1) weights are normalised -log(U) draws. Words are shared between states, so the
   state is hidden: predicting the next word well needs the history, which a recurrent model
   can use and a unigram or bigram model cannot fully.
3. Text, per split: a sentence starts in a state drawn from the start distribution; each step
   emits a word of the state, then with the state's end probability emits ``<eos>`` and starts a
   new sentence, else moves to a successor state. One uniform picks the first state, then each
   word consumes three (emission, end, next state), all drawn up front in float64; sampling
   inverts float64 cumulative sums. The stream is cut at exactly ``train_size`` /
   ``valid_size`` / ``test_size`` tokens (defaults 20,000 / 3,000 / 3,000 when null).

Every run of a sweep sees the same corpus: the data seed is not a source of nondeterminism.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Optional

import torch

from nondet.config import TEXT_DATASETS, ConfigError, DatasetConfig
from nondet.seeds import hashed_seed, make_generator

EOS = "<eos>"
UNK = "<unk>"

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_SPLITS = ("train", "valid", "test")

# Synthetic text grammar constants (see the module docstring).
BRANCHING = 4
EMISSION_FRACTION = 0.1
ZIPF_EXPONENT = 1.1
# Sizes used when the config leaves a split's size null.
SYNTHETIC_TEXT_SIZES = {"train": 20_000, "valid": 3_000, "test": 3_000}


class TextNotFoundError(FileNotFoundError):
    """The Penn Treebank files are missing; the message says where they were looked for."""


@dataclass
class TextCorpus:
    """Three token streams (int64, on one device) and the vocabulary they index."""

    name: str
    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    # The files' content (``ptb_sha256``), as npz data records the file's: env.json's
    # ``data_sha256`` and the ``dataset.sha256`` of the runs' identity. None: generated text.
    sha256: Optional[str] = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def to(self, device: torch.device | str) -> "TextCorpus":
        return dataclasses.replace(
            self, train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device)
        )


def load_corpus(cfg: DatasetConfig, device: torch.device | str = "cpu") -> TextCorpus:
    """Load ``cfg.name`` (``ptb`` or ``synthetic_text``) onto ``device``."""
    if cfg.name == "ptb":
        corpus = load_ptb(cfg)
    elif cfg.name == "synthetic_text":
        corpus = synthetic_text(cfg)
    else:
        raise ValueError(f"unknown text dataset {cfg.name!r}; choose one of {list(TEXT_DATASETS)}")
    for split in PTB_SPLITS:
        if len(getattr(corpus, split)) < 2:
            raise ValueError(
                f"dataset={cfg.name}: the {split} split has {len(getattr(corpus, split))} tokens; "
                "a language model needs at least 2 (an input and its next word)"
            )
    return corpus.to(device)


# --------------------------------------------------------------------------- Penn Treebank


def ptb_files(root: str) -> dict[str, str] | None:
    """{split: path} of the first folder under ``root`` that holds all three files, or None."""
    for folder in (root, os.path.join(root, "penn"), os.path.join(root, "ptb")):
        for pattern in ("ptb.{}.txt", "{}.txt"):
            paths = {s: os.path.join(folder, pattern.format(s)) for s in PTB_SPLITS}
            if all(os.path.isfile(p) for p in paths.values()):
                return paths
    return None


def _ptb_error(root: str) -> TextNotFoundError:
    where = os.path.abspath(root)
    return TextNotFoundError(
        f"Penn Treebank not found under dataset.root={root!r} ({where}). Looked for "
        "ptb.train.txt, ptb.valid.txt, ptb.test.txt (or train.txt, valid.txt, test.txt) in that "
        "folder and in its penn/ and ptb/ subfolders.\n"
        f"Get Mikolov's pre-processed PTB, {PTB_URL}, and copy simple-examples/data/ptb.*.txt "
        "into the root (AWD-LSTM's getdata.sh puts the same files in data/penn/ as train.txt, "
        "valid.txt, test.txt; that layout works too). Point elsewhere with "
        "dataset.root=/path/to/dir, or use dataset=synthetic_text, which needs no download."
    )


def ptb_sha256(digests: dict[str, str]) -> str:
    """``dataset.sha256`` of the Penn Treebank: the SHA-256 of its three files' SHA-256s, in
    split order, so that a file rewritten in place names new runs (``nondet.data.data_fingerprint``)."""
    return hashlib.sha256("".join(f"{s}:{digests[s]}\n" for s in PTB_SPLITS).encode()).hexdigest()


def read_words(path: str) -> list[str]:
    """The tokens of a one-sentence-per-line file: each line's words, then ``<eos>``."""
    with open(path, "rb") as f:
        return words_of(f.read(), path)


def words_of(raw: bytes, path: str | None = None) -> list[str]:
    """The tokens of a one-sentence-per-line file's bytes (UTF-8, any newline convention);
    ``path`` names the file in the refusal of bytes that are not UTF-8."""
    words: list[str] = []
    try:
        for line in io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"):
            words += line.split()
            words.append(EOS)
    except UnicodeDecodeError:
        raise ConfigError(_not_utf8(raw, path)) from None
    return words


def _not_utf8(raw: bytes, path: str | None) -> str:
    """Where the first byte that is not UTF-8 is, and how to mend the file."""
    try:
        raw.decode("utf-8")
        start = 0
    except UnicodeDecodeError as e:  # decoded whole: the position in the file, not in a chunk
        start = e.start
    line = raw.count(b"\n", 0, start) + 1
    return (f"{path or 'the text file'} is not UTF-8 text (byte 0x{raw[start]:02x} on line {line}): "
            "convert it to UTF-8 (iconv -f latin1 -t utf-8 FILE > NEW, if it is Latin-1), or use "
            f"Mikolov's pre-processed PTB ({PTB_URL}), which is plain ASCII")


def build_vocab(words: list[str]) -> list[str]:
    """Distinct words in order of first appearance."""
    return list(dict.fromkeys(words))


def encode(words: list[str], index: dict[str, int], split: str) -> torch.Tensor:
    unk = index.get(UNK)
    ids = []
    for w in words:
        i = index.get(w, unk)
        if i is None:
            raise ValueError(
                f"the {split} file holds the word {w!r}, which is not in the training file's "
                f"vocabulary, and there is no {UNK} to map it to"
            )
        ids.append(i)
    return torch.tensor(ids, dtype=torch.int64)


def _first_tokens(tokens: torch.Tensor, k: Optional[int], key: str) -> torch.Tensor:
    if k is None:
        return tokens
    if k < 2:
        raise ValueError(f"dataset.{key}={k}: must be at least 2 tokens, or null (all)")
    return tokens[:k].clone()


def load_ptb(cfg: DatasetConfig) -> TextCorpus:
    paths = ptb_files(cfg.root)
    if paths is None:
        raise _ptb_error(cfg.root)
    raw = {}
    for split in PTB_SPLITS:  # hashed as read: the runs record the text they trained on
        with open(paths[split], "rb") as f:
            raw[split] = f.read()
    words = {s: words_of(raw[s], paths[s]) for s in PTB_SPLITS}
    vocab = build_vocab(words["train"])
    index = {w: i for i, w in enumerate(vocab)}
    streams = {s: encode(words[s], index, s) for s in PTB_SPLITS}
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    streams = {s: _first_tokens(t, sizes[s], f"{s}_size") for s, t in streams.items()}
    sha256 = ptb_sha256({s: hashlib.sha256(raw[s]).hexdigest() for s in PTB_SPLITS})
    return TextCorpus("ptb", vocab, streams["train"], streams["valid"], streams["test"], sha256)


# --------------------------------------------------------------------------- synthetic text


def text_generator(data_seed: int, part: str) -> torch.Generator:
    """The CPU generator of one part ("grammar", "train", "valid", "test") of the synthetic text."""
    return make_generator(hashed_seed("nondet.text/synthetic", data_seed, part))


@dataclass
class Grammar:
    """The hidden Markov source: cumulative distributions (Python floats, for ``bisect``)."""

    start: list[float]  # (S,) cumulative
    successors: list[list[int]]  # per state, its BRANCHING successor states
    transition: list[list[float]]  # per state, cumulative weights over its successors
    words: list[list[int]]  # per state, its emission words (ids >= 1)
    emission: list[list[float]]  # per state, cumulative Zipf weights over its words
    end: list[float]  # per state, probability of <eos> after a word


def _cumulative(weights: torch.Tensor) -> list[float]:
    weights = weights.to(torch.float64)
    cumulative = torch.cumsum(weights / weights.sum(), 0)
    cumulative[-1] = 1.0  # exact top, so a uniform in [0, 1) always lands
    return cumulative.tolist()


def _dirichlet_ones(n: int, generator: torch.Generator) -> torch.Tensor:
    """Dirichlet(1, ..., 1) as normalised -log(U): uniform over the simplex."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return -torch.log1p(-u)


def make_grammar(cfg: DatasetConfig) -> Grammar:
    vocab, states = cfg.vocab_size, cfg.hidden_states
    if vocab < 3:
        raise ValueError(f"dataset.vocab_size={vocab}: needs <eos> and at least 2 words")
    if states < 1:
        raise ValueError(f"dataset.hidden_states={states} must be at least 1")
    if not cfg.sentence_length > 1.0:
        raise ValueError(f"dataset.sentence_length={cfg.sentence_length} must be above 1")
    g = text_generator(cfg.data_seed, "grammar")
    branching = min(BRANCHING, states)
    emitted = min(vocab - 1, max(2, round(EMISSION_FRACTION * (vocab - 1))))
    zipf = 1.0 / torch.arange(1, emitted + 1, dtype=torch.float64) ** ZIPF_EXPONENT
    start = _cumulative(_dirichlet_ones(states, g))
    successors, transition, words, emission = [], [], [], []
    for _ in range(states):
        successors.append(torch.randperm(states, generator=g)[:branching].tolist())
        transition.append(_cumulative(_dirichlet_ones(branching, g)))
        words.append((torch.randperm(vocab - 1, generator=g)[:emitted] + 1).tolist())
        emission.append(_cumulative(zipf))
    end = (torch.rand(states, generator=g, dtype=torch.float64) * (2.0 / cfg.sentence_length)).tolist()
    return Grammar(start, successors, transition, words, emission, end)


def sample_text(grammar: Grammar, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` tokens of the hidden Markov source (see the module docstring)."""
    # One uniform for the first state, then at most three per emitted word (n words at most).
    uniforms = torch.rand(3 * n + 1, generator=generator, dtype=torch.float64).tolist()
    tokens: list[int] = []
    state = bisect.bisect_right(grammar.start, uniforms[0])
    k = 1
    while len(tokens) < n:
        u_word, u_end, u_next = uniforms[k : k + 3]
        k += 3
        tokens.append(grammar.words[state][bisect.bisect_right(grammar.emission[state], u_word)])
        if u_end < grammar.end[state]:
            tokens.append(0)  # <eos>; the next sentence's start state reuses u_next
            state = bisect.bisect_right(grammar.start, u_next)
        else:
            state = grammar.successors[state][bisect.bisect_right(grammar.transition[state], u_next)]
    return torch.tensor(tokens[:n], dtype=torch.int64)


def synthetic_text(cfg: DatasetConfig) -> TextCorpus:
    grammar = make_grammar(cfg)
    vocab = [EOS] + [f"w{i}" for i in range(1, cfg.vocab_size)]
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    streams = {}
    for split in PTB_SPLITS:
        n = SYNTHETIC_TEXT_SIZES[split] if sizes[split] is None else sizes[split]
        if n < 2:
            raise ValueError(f"dataset.{split}_size={n}: must be at least 2 tokens")
        streams[split] = sample_text(grammar, n, text_generator(cfg.data_seed, split))
    return TextCorpus("synthetic_text", vocab, streams["train"], streams["valid"], streams["test"])
