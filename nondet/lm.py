"""Train one language-model replica (``model=qrnn`` on ``dataset=ptb`` / ``synthetic_text``).

    python launch.py -m +experiment=table2 scale=smoke     # init and dropout (stochastic ops)
    python launch.py -m +experiment=table4 scale=smoke     # one-ULP bit flip
    python launch.py -m +experiment=table2 dataset.root=/data/ptb   # the paper's scale, on a GPU

Summers & Dinneen (2021, Sec. 3.3, Tables 2 and 4) run their protocol on a QRNN language model
trained with the AWD-LSTM code of Merity et al. Two sources matter there: ``init`` (parameter
initialisation) and the "stochastic operations", dropouts and variable-length BPTT sharing one
seed: here the ``dropout`` source, whose generator draws every dropout mask *and* every BPTT
length. ``bitflip`` moves one weight of the first QRNN layer by one ULP (Table 4). ``shuffle``,
``augment`` and ``reduction`` have nothing to act on (the text is read in order, without
augmentation): a sweep that varies only those is refused (``nondet.job.inert_sources``).

The recipe (AWD-LSTM ``main.py``, as run for a QRNN on PTB), one epoch = one pass through the
training stream cut into ``batch_size`` parallel streams:

- window length: the base ``lm.bptt`` with probability 0.95, else half of it, plus N(0, 5^2)
  jitter, truncated to an integer, at least 5 (:func:`bptt_length`; two float64 draws from the
  dropout generator, a uniform then a normal, before the window's masks); the last window is
  cut at the end of the stream;
- the window's learning rate is the schedule's rate times length / bptt (``lr`` in
  ``metrics.jsonl`` is the schedule's rate; ``train_loss`` the mean cross-entropy per training
  token, without AR and TAR);
- the hidden state is carried from window to window and detached (zeros at an epoch's start);
- loss = cross-entropy + alpha * mean(h_drop^2) (AR, the last layer's output after output
  dropout) + beta * mean((h_t - h_{t-1})^2) (TAR, before it); clip the gradient norm to
  ``lm.clip``; SGD step (lr 30, no momentum, weight decay 1.2e-6 in the presets);
- NT-ASGD (``lm.asgd``): after each epoch the validation cross-entropy is compared with the
  best of all but the last ``lm.nonmono`` epochs; when it is worse, averaging starts: after every
  later step the running mean a_k = a_{k-1} + (w_k - a_{k-1}) / k of the weights is updated (as
  ``torch.optim.ASGD(t0=0, lambd=0)`` does). From then on the average is what is evaluated and
  what ``weights.pt`` holds.

Hyper-parameters of the paper's model, and where they come from (``conf/model/qrnn.yaml``,
``conf/experiment/table2.yaml``, ``LMConfig`` in ``nondet/config.py``):

==========================  ==========  ==================================================
embedding / hidden / layers  256/512/3   the paper (Sec. 3.3); AWD's QRNN recipe: 400/1550/4
dropout (output)             0.4         AWD main.py default (``--dropout``)
hidden_dropout               0.3         AWD QRNN PTB recipe (``--dropouth 0.3``)
input_dropout                0.4         AWD QRNN PTB recipe (``--dropouti 0.4``)
embedding_dropout            0.1         AWD main.py default (``--dropoute``)
weight_dropout               0.1         AWD QRNN PTB recipe (``--wdrop 0.1``)
batch_size                   20          AWD QRNN PTB recipe (``--batch_size 20``)
lm.bptt                      70          AWD main.py default
lm.clip                      0.2         AWD QRNN PTB recipe (``--clip 0.2``; main.py: 0.25)
lm.alpha / lm.beta           2 / 1       AWD main.py defaults (AR / TAR)
optimizer                    SGD lr 30   AWD main.py defaults (``--lr 30``, ``--optimizer sgd``,
                                         no momentum, ``--wdecay 1.2e-6``), then NT-ASGD
lm.nonmono                   5           AWD main.py default
epochs                       550         AWD QRNN PTB recipe (``--epochs 550``)
eval / test batch            10 / 1      AWD main.py (``eval_batch_size``, ``test_batch_size``)
==========================  ==========  ==================================================

The AWD values were read from the salesforce/awd-lstm-lm README ("Penn Treebank (PTB) with
QRNN": ``main.py --model QRNN --batch_size 20 --clip 0.2 --wdrop 0.1 --nhid 1550 --nlayers 4
--emsize 400 --dropouth 0.3 --seed 9001 --dropouti 0.4 --epochs 550``, 58.3 test PPL) and
``main.py``'s argument defaults. Not verified: the paper gives only the three sizes and the
75.49 test PPL; that it kept every other value of the QRNN recipe (epochs included), trained
without AWD's fine-tuning stage, and what its learning-rate decay points (``--when``, off by
default) were, are assumptions.

Deliberate differences from the AWD code: (1) the reported model is the one after the last
epoch (under NT-ASGD, the average), not the checkpoint with the best validation loss (the
validation perplexity of every epoch is in ``metrics.jsonl``); (2) torch's ASGD applies the
previous step's learning rate (its ``eta`` lags by a step), here each step uses its own;
(3) plain-PyTorch fo-pooling instead of the ``torchqrnn`` CUDA kernel (``nondet/models/qrnn.py``).

Records (README, "The run directory"): the image contract with ``test_perplexity`` added to
``metrics.jsonl`` and ``result.json``, and instead of ``logits.npy`` (N x V is too large for
82k test tokens x 10k words): ``target_logprobs.npy`` (float32 (N,), log p(target) of every test
token), ``predictions.npy`` (int64 (N,), argmax), ``logprobs_subset.npy`` (float32 (K, V),
full log-probabilities at ``subset_positions.npy``, int64 (K,), K = ``lm.logprob_positions``
positions drawn from a generator seeded by the data seed alone). Test tokens are in text order:
the test stream is cut into ``lm.test_batch_size`` streams (the tail that does not fill the
last row is dropped) and stream 0's targets come first.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nondet import records, train
from nondet.backend import autocast
from nondet.config import TEXT_DATASETS, ConfigError
from nondet.models import LANGUAGE_MODEL_NAMES, build_language_model, set_dropout_generator
from nondet.optim import build_optimizer, learning_rate
from nondet.seeds import SeedPlan, hashed_seed, make_generator
from nondet.text import TextCorpus
from nondet.train import Replica

log = logging.getLogger("nondet")

# Variable-length BPTT (AWD-LSTM main.py).
BPTT_FULL_PROBABILITY = 0.95
BPTT_JITTER_SD = 5.0
BPTT_MIN = 5


def is_language_model(config: dict) -> bool:
    return config["model"]["name"] in LANGUAGE_MODEL_NAMES


def check_config(config: dict) -> None:
    """Configuration mistakes of a language-model run, before anything is trained (a no-op
    for an image model on an image dataset)."""
    model, dataset = config["model"]["name"], config["dataset"]["name"]
    if model not in LANGUAGE_MODEL_NAMES and dataset not in TEXT_DATASETS:
        return
    if model in LANGUAGE_MODEL_NAMES and dataset not in TEXT_DATASETS:
        raise ValueError(
            f"model={model} is a language model and needs a text dataset, not dataset={dataset}: "
            "use dataset=synthetic_text (embedded, no download) or dataset=ptb "
            "dataset.root=DIR, or the paper's presets +experiment=table2 / table4 "
            "(scale=smoke on a CPU)"
        )
    if dataset in TEXT_DATASETS and model not in LANGUAGE_MODEL_NAMES:
        raise ValueError(
            f"dataset={dataset} is text; it needs a language model ({', '.join(LANGUAGE_MODEL_NAMES)}), "
            f"not model={model}"
        )
    if "data" in config["source"]["vary"]:
        raise ValueError(
            f"source={config['source']['name']} varies data with model={model}: a language model "
            "reads its text as one stream, which has no examples to resample; leave data out of "
            "source.vary"
        )
    if config["schedule"]["name"] == "snapshot":
        raise ValueError(
            f"schedule=snapshot with model={model}: a snapshot ensemble of a language model is not "
            "implemented (it would need every snapshot's full distributions); use schedule=constant "
            "or schedule=cosine"
        )
    lm = config["lm"]
    if lm["bptt"] < 2:
        raise ValueError(f"lm.bptt={lm['bptt']} must be at least 2")
    for key in ("eval_batch_size", "test_batch_size"):
        if lm[key] < 1:
            raise ValueError(f"lm.{key}={lm[key]} must be positive")
    if config["batch_size"] < 1:
        raise ValueError(f"batch_size={config['batch_size']} must be positive")
    for key in ("nonmono", "logprob_positions"):
        if lm[key] < 0:
            raise ValueError(f"lm.{key}={lm[key]} must not be negative")
    if lm["clip"] < 0:
        raise ValueError(f"lm.clip={lm['clip']} must not be negative (0 turns clipping off)")


# --------------------------------------------------------------------------- the data stream


# The key that sets how many parallel streams each split is cut into.
STREAM_KEYS = {"train": "batch_size", "valid": "lm.eval_batch_size", "test": "lm.test_batch_size"}


def batchify(tokens: torch.Tensor, streams: int, split: str | None = None) -> torch.Tensor:
    """(L, streams): the token stream cut into ``streams`` contiguous parts, one per column
    (the tail that does not fill a row is dropped), as AWD-LSTM's ``batchify``. ``split``
    (train, valid, test) names the keys to set in the refusal of a stream too short."""
    length = len(tokens) // streams
    if length < min_stream(split):
        raise ConfigError(too_short(len(tokens), streams, split))
    return tokens[: length * streams].view(streams, length).t().contiguous()


def min_stream(split: str | None) -> int:
    """The fewest tokens a stream of ``split`` needs: an input and its next word, and for
    training one more (``train_lm_epoch``, as AWD-LSTM, stops a window short of the end: a
    stream of 2 would train nothing)."""
    return 3 if split == "train" else 2


def too_short(tokens: int, streams: int, split: str | None) -> str:
    """Why ``tokens`` cannot be cut into ``streams`` streams long enough, and the keys that
    mend it."""
    need = min_stream(split)
    if split is None:
        return (f"{tokens} tokens cannot be cut into {streams} streams of at least {need} tokens; lower "
                f"{', '.join(STREAM_KEYS.values())} or raise dataset.train_size / valid_size / test_size")
    key = STREAM_KEYS[split]
    return (f"the {split} split's {tokens} tokens cannot be cut into {key}={streams} streams of at "
            f"least {need} tokens: set {key} to at most {max(1, tokens // need)}, or "
            f"dataset.{split}_size to at least {need * streams}")


def check_splits(config: dict, corpus: TextCorpus) -> None:
    """Refuse, before anything is trained, a split too short for the streams it is cut into
    (``batchify``'s rule): otherwise every run would fail at its first evaluation."""
    streams_of = {"train": config["batch_size"], "valid": config["lm"]["eval_batch_size"],
                  "test": config["lm"]["test_batch_size"]}
    for split, streams in streams_of.items():
        batchify(getattr(corpus, split), streams, split)


def bptt_length(base: int, generator: torch.Generator) -> int:
    """One window length of variable-length BPTT: two float64 draws from ``generator``."""
    device = generator.device
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=device)
    n = torch.randn(1, generator=generator, dtype=torch.float64, device=device)
    u, n = torch.cat([u, n]).tolist()
    mean = base if u < BPTT_FULL_PROBABILITY else base / 2.0
    return max(BPTT_MIN, int(mean + BPTT_JITTER_SD * n))


def subset_positions(n: int, k: int, data_seed: int) -> torch.Tensor:
    """``min(k, n)`` sorted test positions from a generator seeded by the data seed alone, so
    every run of a sweep stores the same positions."""
    g = make_generator(hashed_seed("nondet.lm/subset", data_seed))
    return torch.randperm(n, generator=g)[: min(k, n)].sort().values


# --------------------------------------------------------------------------- the replica


@dataclass
class LMReplica(Replica):
    """A language-model replica: the image replica's state plus NT-ASGD's (all of it in the
    checkpoint)."""

    # NT-ASGD: the running average of the parameters (None until averaging starts).
    average: Optional[list[torch.Tensor]] = None
    averaged_steps: int = 0
    asgd_from_epoch: Optional[int] = None
    valid_history: list[float] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "average": self.average,
            "averaged_steps": self.averaged_steps,
            "asgd_from_epoch": self.asgd_from_epoch,
            "valid_history": self.valid_history,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.average = state["average"]
        self.averaged_steps = state["averaged_steps"]
        self.asgd_from_epoch = state["asgd_from_epoch"]
        self.valid_history = list(state["valid_history"])


def new_lm_replica(config: dict, corpus: TextCorpus) -> LMReplica:
    """A freshly initialised replica: generators, model (from the init generator), optimizer."""
    device = config["device"]
    plan = SeedPlan.for_run(config["base_seed"], config["source"]["vary"], config["replicate"])
    generators = plan.generators(device, before_onset=config["onset_epoch"] > 0)
    model = build_language_model(
        OmegaConf.create(config["model"]), corpus.vocab_size, generators["init"]
    ).to(device)
    set_dropout_generator(model, generators["dropout"])
    return LMReplica(plan=plan, model=model, generators=generators,
                     make_optimizer=lambda: build_optimizer(config["optimizer"], model.parameters()))


@contextlib.contextmanager
def averaged_weights(replica: LMReplica) -> Iterator[None]:
    """Inside: the model holds the NT-ASGD average (when averaging has taken a step); the
    trained weights are put back, bit for bit, on the way out."""
    if replica.average is None or replica.averaged_steps == 0:
        yield
        return
    params = list(replica.model.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, a in zip(params, replica.average):
            p.copy_(a)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _update_average(replica: LMReplica, params: list[torch.Tensor]) -> None:
    replica.averaged_steps += 1
    with torch.no_grad():
        if replica.averaged_steps == 1:
            for a, p in zip(replica.average, params):
                a.copy_(p)
        else:
            mu = 1.0 / replica.averaged_steps
            for a, p in zip(replica.average, params):
                a.add_(p.sub(a).mul_(mu))


def train_lm_epoch(replica: LMReplica, config: dict, stream: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One pass over the batchified training stream (L, B); returns the mean cross-entropy per
    token (a device scalar) and the schedule's learning rate at the last step."""
    model, optimizer = replica.model, replica.optimizer
    lm = config["lm"]
    base, clip, alpha, beta = lm["bptt"], lm["clip"], lm["alpha"], lm["beta"]
    dropout_generator = replica.generators["dropout"]
    precision, device = config["precision"], config["device"]
    max_lr = config["optimizer"]["lr"]
    rows = stream.shape[0]
    # The schedule sees the position in units of base-length windows.
    nominal_steps = max(1, math.ceil((rows - 1) / base))
    params = list(model.parameters())
    model.train()
    state = model.initial_state(stream.shape[1])
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    tokens = 0
    scheduled = max_lr
    i = 0
    while i < rows - 2:
        length = bptt_length(base, dropout_generator) if lm["variable_bptt"] else base
        length = min(length, rows - 1 - i)
        progress = replica.epoch * nominal_steps + i // base
        scheduled = learning_rate(config["schedule"], max_lr, progress, nominal_steps, config["epochs"])
        for group in optimizer.param_groups:
            group["lr"] = scheduled * length / base
        inputs, targets = stream[i : i + length], stream[i + 1 : i + 1 + length]
        with autocast(precision, device):
            out = model(inputs, state.detach())
        state = out.state
        raw_loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), targets.reshape(-1))
        loss = raw_loss
        if alpha:
            loss = loss + alpha * out.last_dropped.float().pow(2).mean()
        if beta:
            loss = loss + beta * (out.last_raw[1:] - out.last_raw[:-1]).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if replica.average is not None:
            _update_average(replica, params)
        loss_sum += raw_loss.detach().double() * length
        tokens += length
        replica.step += 1
        i += length
    return loss_sum / max(tokens, 1), scheduled


# --------------------------------------------------------------------------- evaluation


def perplexity(cross_entropy: float) -> float:
    """exp(cross-entropy): inf past float64's range, NaN for NaN."""
    try:
        return math.exp(cross_entropy)
    except OverflowError:
        return math.inf


@dataclass
class LMEvaluation:
    """Per-token results in text order (see the module docstring), on the CPU."""

    target_logprobs: np.ndarray  # float32 (N,)
    predictions: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    subset_logprobs: Optional[np.ndarray]  # float32 (K, V)
    subset_positions: Optional[np.ndarray]  # int64 (K,)

    @property
    def cross_entropy(self) -> float:
        return float(-np.mean(self.target_logprobs.astype(np.float64)))

    @property
    def perplexity(self) -> float:
        # A diverged run's cross-entropy can be finite yet above log(float max) (~709): its
        # perplexity is inf, a value the analysis names as diverged, not an OverflowError.
        return perplexity(self.cross_entropy)

    @property
    def accuracy(self) -> float:
        return float(100.0 * np.mean(self.predictions == self.labels))


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    streams: int,
    bptt: int,
    precision: str,
    positions: Optional[torch.Tensor] = None,
    split: str | None = None,
) -> LMEvaluation:
    """Walk ``streams`` parallel streams in windows of ``bptt``, carrying the state; every
    target's log-probability and argmax, and the full log-probabilities at ``positions`` (text
    order indices into the N targets)."""
    model.eval()
    data = batchify(tokens, streams, split)
    rows = data.shape[0] - 1  # targets per stream
    device = data.device
    target_logprobs = torch.empty(rows, streams, dtype=torch.float32, device=device)
    predictions = torch.empty(rows, streams, dtype=torch.int64, device=device)
    windows = {}
    subset = None
    if positions is not None and len(positions):
        # position p (text order) = stream * rows + time
        stream_of, time_of = positions // rows, positions % rows
        window_of = time_of // bptt
        for w in window_of.unique().tolist():
            chosen = (window_of == w).nonzero().view(-1)
            flat = (time_of[chosen] - w * bptt) * streams + stream_of[chosen]
            windows[w * bptt] = (chosen.to(device), flat.to(device))
        subset = torch.empty(len(positions), model.vocab_size, dtype=torch.float32, device=device)
    state = model.initial_state(streams)
    for i in range(0, rows, bptt):
        length = min(bptt, rows - i)
        with autocast(precision, device.type):
            out = model(data[i : i + length], state)
        state = out.state
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        target_logprobs[i : i + length] = logprobs.gather(-1, data[i + 1 : i + 1 + length, :, None])[..., 0]
        predictions[i : i + length] = out.logits.argmax(dim=-1)
        if i in windows:
            chosen, flat = windows[i]
            subset[chosen] = logprobs.reshape(-1, logprobs.shape[-1])[flat]
    labels = data[1:]
    text_order = lambda t: t.t().reshape(-1).cpu().numpy()  # noqa: E731  (stream-major)
    return LMEvaluation(
        target_logprobs=text_order(target_logprobs).astype(np.float32),
        predictions=text_order(predictions).astype(np.int64),
        labels=text_order(labels).astype(np.int64),
        subset_logprobs=None if subset is None else subset.cpu().numpy().astype(np.float32),
        subset_positions=None if subset is None else positions.cpu().numpy().astype(np.int64),
    )


# --------------------------------------------------------------------------- one run


def _start_averaging(replica: LMReplica, valid_cross_entropy: float, nonmono: int) -> None:
    """NT-ASGD's trigger, as AWD-LSTM: worse than the best of all but the last ``nonmono``."""
    history = replica.valid_history
    if replica.average is None and len(history) > nonmono and valid_cross_entropy > min(history[: len(history) - nonmono]):
        replica.average = [p.detach().clone() for p in replica.model.parameters()]
        replica.averaged_steps = 0
        replica.asgd_from_epoch = replica.epoch
        log.info("epoch %d: validation stopped improving; averaging the weights (NT-ASGD)", replica.epoch)
    history.append(valid_cross_entropy)


class LMGroup:
    """One language-model replica in ``nondet.train``'s loop: its step, NT-ASGD's trigger after
    each epoch, and its evaluation (under the NT-ASGD average once averaging has begun)."""

    def __init__(self, replica: LMReplica, config: dict, corpus: TextCorpus) -> None:
        self.replica, self.config, self.corpus = replica, config, corpus
        self.epoch, self.lr = replica.epoch, config["optimizer"]["lr"]
        lm = config["lm"]
        self.train_stream = batchify(corpus.train, config["batch_size"], "train")
        test_targets = lm["test_batch_size"] * (batchify(corpus.test, lm["test_batch_size"], "test").shape[0] - 1)
        self.positions = subset_positions(test_targets, lm["logprob_positions"], config["dataset"]["data_seed"])

    @property
    def step(self) -> int:
        return self.replica.step

    def train_epoch(self, after_step=None) -> torch.Tensor:
        loss, self.lr = train_lm_epoch(self.replica, self.config, self.train_stream)
        return loss.view(1)

    def _evaluate(self, split: str, streams: int, positions=None) -> LMEvaluation:
        return evaluate_lm(self.replica.model, getattr(self.corpus, split), streams, self.config["lm"]["bptt"],
                           self.config["precision"], positions, split)

    def _test(self) -> LMEvaluation:
        return self._evaluate("test", self.config["lm"]["test_batch_size"], self.positions)

    def end_of_epoch(self, report: bool) -> list[train.Evaluation] | None:
        lm, replica = self.config["lm"], self.replica
        valid = test = None
        with averaged_weights(replica):
            if lm["asgd"] or report:
                valid = self._evaluate("valid", lm["eval_batch_size"])
            if report:
                test = self._test()
        if lm["asgd"]:
            _start_averaging(replica, valid.cross_entropy, lm["nonmono"])
        if not report:
            return None
        return [self._evaluation(test, {
            "valid_cross_entropy": valid.cross_entropy,
            "valid_perplexity": valid.perplexity,
            "averaging": replica.averaged_steps > 0,
        })]

    def evaluate(self) -> list[train.Evaluation]:
        with averaged_weights(self.replica):
            return [self._evaluation(self._test(), {})]

    def _evaluation(self, test: LMEvaluation, row: dict) -> train.Evaluation:
        def files() -> dict[str, np.ndarray]:
            arrays = {records.TARGET_LOGPROBS_FILE: test.target_logprobs,
                      records.PREDICTIONS_FILE: test.predictions, records.LABELS_FILE: test.labels}
            if test.subset_positions is not None:
                arrays[records.LOGPROBS_SUBSET_FILE] = test.subset_logprobs
                arrays[records.SUBSET_POSITIONS_FILE] = test.subset_positions
            return arrays

        result = {"test_perplexity": test.perplexity, "asgd_from_epoch": self.replica.asgd_from_epoch}
        return train.Evaluation(test.accuracy, test.cross_entropy, row={"test_perplexity": test.perplexity, **row},
                                result=result, files=files)

    def train_mode(self) -> None:
        self.replica.model.train()

    def write_back(self, with_optimizer: bool = True) -> None:
        pass


class LMFamily:
    """Language models in the run lifecycle: one replica at a time (no packed form)."""

    def new_replica(self, config: dict, corpus: TextCorpus) -> LMReplica:
        return new_lm_replica(config, corpus)

    def steps_per_epoch(self, config: dict, corpus: TextCorpus) -> int:
        return 0  # no snapshots (refused by check_config)

    def apart(self, config: dict, corpus: TextCorpus, size: int | None = None) -> str:
        return f"model={config['model']['name']} has no packed form"

    def env(self, config: dict, replicates: list[int]) -> dict:
        return {}

    def with_spares(self, replicas, config, corpus):
        return replicas

    def group(self, replicas: list[LMReplica], config: dict, corpus: TextCorpus) -> LMGroup:
        (replica,) = replicas
        return LMGroup(replica, config, corpus)

    def weights(self, replica: LMReplica) -> dict:
        with averaged_weights(replica):
            # clone: on the CPU .cpu() is the parameter itself, which the context then restores
            return {k: v.detach().cpu().clone() for k, v in replica.model.state_dict().items()}
