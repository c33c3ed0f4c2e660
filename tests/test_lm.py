"""Language modelling: the QRNN, its seeded stochastic operations, the text data, the
LM training loop's records and the Table 2 metrics. Exact comparisons where the protocol
promises exactness (fo-pooling, control runs, resume); tolerances only for gradient checks."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from analysis import lm as lm_analysis
from analysis.load import load_sweep
from analysis.tables import summarize
from conftest import compose_config
from nondet import lm, records
from nondet.config import DatasetConfig, ModelConfig
from nondet.job import run_job
from nondet.models import build_language_model, build_model, first_layer_weight, set_dropout_generator
from nondet.models.qrnn import EmbeddingDropout, LockedDropout, fo_pool
from nondet.seeds import SeedPlan, make_generator
from nondet.text import TextNotFoundError, load_corpus, synthetic_text

# A tiny language model on a tiny synthetic corpus: a run takes well under a second.
TINY_LM = [
    "model=qrnn", "dataset=synthetic_text", "dataset.vocab_size=30", "dataset.hidden_states=4",
    "dataset.train_size=1200", "dataset.valid_size=300", "dataset.test_size=300",
    "model.embedding_dim=8", "model.width=12", "model.depth=2", "batch_size=4", "lm.bptt=10",
    "lm.eval_batch_size=2", "lm.test_batch_size=2", "lm.logprob_positions=50",
    "optimizer.lr=30", "optimizer.momentum=0", "optimizer.weight_decay=1.2e-6",
    "schedule=constant", "epochs=2", "device=cpu", "threads=1", "pack=1", "checkpoint_every=1",
]
LM_FILES = ["config.yaml", "env.json", "seeds.json", "metrics.jsonl", "labels.npy",
            "target_logprobs.npy", "predictions.npy", "logprobs_subset.npy",
            "subset_positions.npy", "weights.pt", "result.json"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and threads=1 in TINY_LM sets it anyway); the
    process's thread count is put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lm_config(root, *overrides):
    return compose_config([f"output_root={root}", *TINY_LM, *overrides], tiny=False)


def run(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inert sources under source=all
        return run_job(OmegaConf.create(config))


def tiny_qrnn(seed=0, vocab=11, depth=3, **kw):
    cfg = ModelConfig(name="qrnn", embedding_dim=4, width=6, depth=depth, **kw)
    return build_language_model(cfg, vocab, make_generator(seed))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two replicates of each source: none, init, dropout (stochastic ops), bitflip."""
    root = tmp_path_factory.mktemp("lm")
    dirs = {}
    for source in ("none", "init", "dropout", "bitflip"):
        for replicate in (0, 1):
            config = lm_config(root, f"source={source}", f"replicate={replicate}")
            outcome = run(config)
            assert outcome["finished"], outcome
            dirs[source, replicate] = records.run_dir(config)
    return root, dirs


# --------------------------------------------------------------------------- the QRNN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fo_pooling_equals_a_naive_loop_exactly(dtype):
    g = make_generator(0)
    f = torch.rand(13, 3, 7, generator=g, dtype=dtype)
    z = torch.randn(13, 3, 7, generator=g, dtype=dtype)
    c0 = torch.randn(3, 7, generator=g, dtype=dtype)
    c, expected = fo_pool(f, z, c0), []
    h = c0
    for t in range(len(f)):
        h = f[t] * z[t] + (1 - f[t]) * h
        expected.append(h)
    assert torch.equal(c, torch.stack(expected))


def test_fo_pooling_gradient_check():
    g = make_generator(1)
    inputs = (torch.rand(6, 2, 3, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(6, 2, 3, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_())
    assert torch.autograd.gradcheck(fo_pool, inputs)


def test_tiny_qrnn_gradient_check_float64_with_every_regulariser():
    model = tiny_qrnn(vocab=5, depth=2, dropout=0.3, hidden_dropout=0.2, input_dropout=0.2,
                      embedding_dropout=0.1, weight_dropout=0.2).double()
    tokens = torch.randint(5, (4, 2), generator=make_generator(2))
    state = model.initial_state(2)
    names = [n for n, _ in model.named_parameters()]

    def loss(*params):
        set_dropout_generator(model, make_generator(3))  # the same masks at every evaluation
        out = functional_call(model, dict(zip(names, params)), (tokens, state))
        return (out.logits.log_softmax(-1).mean() + out.last_dropped.pow(2).mean()
                + out.state.hidden[-1].sum() + out.last_raw.sum())

    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(loss, params)


def test_qrnn_shapes_tied_embedding_and_bitflip_target():
    model = tiny_qrnn()
    assert model.layers[0].window == 2 and all(layer.window == 1 for layer in model.layers[1:])
    assert [layer.hidden_size for layer in model.layers] == [6, 6, 4]  # the last meets E
    out = model(torch.zeros(5, 2, dtype=torch.long), model.initial_state(2))
    assert out.logits.shape == (5, 2, 11)
    assert [h.shape for h in out.state.hidden] == [(2, 6), (2, 6), (2, 4)]
    assert {n for n, _ in model.named_parameters()} == {
        "embedding.weight", "decoder_bias",
        *(f"layers.{i}.linear.{w}" for i in range(3) for w in ("weight", "bias"))}
    assert first_layer_weight(model)[0] == "layers.0.linear.weight"
    with pytest.raises(ValueError, match="language model"):
        build_model(ModelConfig(name="qrnn"), (4,), 11, make_generator(0))


def test_state_carries_across_windows():
    model = tiny_qrnn().eval()
    tokens = torch.randint(11, (8, 2), generator=make_generator(4))
    whole = model(tokens, model.initial_state(2)).logits
    first = model(tokens[:5], model.initial_state(2))
    second = model(tokens[5:], first.state.detach())
    assert torch.allclose(torch.cat([first.logits, second.logits]), whole, atol=1e-6)
    assert not torch.allclose(model(tokens[5:], model.initial_state(2)).logits, whole[5:], atol=1e-4)


def test_init_comes_from_the_init_generator_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = tiny_qrnn(seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(2)
    b, c = tiny_qrnn(seed=5), tiny_qrnn(seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embedding.weight, c.embedding.weight)
    assert a.embedding.weight.abs().max() <= 0.1 and torch.equal(a.decoder_bias, torch.zeros(11))
    bound = 1 / math.sqrt(a.layers[0].linear.in_features)
    assert a.layers[0].linear.weight.abs().max() <= bound


def test_locked_dropout_mask_is_constant_in_time_and_from_the_generator():
    drop = LockedDropout(0.5)
    drop.generator = make_generator(7)
    state = torch.get_rng_state()
    out = drop(torch.ones(9, 3, 5))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(out[t], out[0]) for t in range(9))
    assert (out == 0).any() and (out == 2).any()
    expected = torch.empty(1, 3, 5).bernoulli_(0.5, generator=make_generator(7)) * 2.0
    assert torch.equal(out[:1], expected)
    with pytest.raises(RuntimeError, match="no generator"):
        LockedDropout(0.5)(torch.ones(2, 2, 2))
    rows = EmbeddingDropout(0.5)
    rows.generator = make_generator(8)
    dropped = rows(torch.ones(20, 4))
    assert all(len(set(row.tolist())) == 1 for row in dropped)  # whole words dropped or kept


# --------------------------------------------------------------------------- variable BPTT


def test_bptt_lengths_are_drawn_from_the_generator():
    a = [lm.bptt_length(70, make_generator(9)) for _ in range(1)]
    g1, g2 = make_generator(9), make_generator(9)
    first, second = [lm.bptt_length(70, g1) for _ in range(400)], [lm.bptt_length(70, g2) for _ in range(400)]
    assert first == second and first[0] == a[0]
    assert min(first) >= lm.BPTT_MIN
    halves = sum(length < 52 for length in first)  # base 35 (p = 0.05) vs base 70
    assert 5 <= halves <= 40


def _lengths_of_one_epoch(config, monkeypatch):
    """The BPTT lengths (before the cut at the end of the stream) one epoch draws."""
    drawn = []
    real = lm.bptt_length
    monkeypatch.setattr(lm, "bptt_length", lambda base, g: drawn.append(real(base, g)) or drawn[-1])
    corpus = load_corpus(OmegaConf.create(config["dataset"]), "cpu")
    replica = lm.new_lm_replica(config, corpus)
    lm.train_lm_epoch(replica, config, lm.batchify(corpus.train, config["batch_size"]))
    monkeypatch.setattr(lm, "bptt_length", real)
    return drawn, replica


def test_bptt_lengths_share_the_dropout_generator(tmp_path, monkeypatch):
    no_dropout = ["model.dropout=0", "model.hidden_dropout=0", "model.input_dropout=0",
                  "model.embedding_dropout=0", "model.weight_dropout=0"]
    config = lm_config(tmp_path, "source=dropout", "replicate=1", *no_dropout)
    drawn, replica = _lengths_of_one_epoch(config, monkeypatch)
    # With every dropout off, the lengths are the dropout generator's stream and nothing else.
    g = make_generator(SeedPlan.for_run(0, ["dropout"], 1).seeds["dropout"])
    assert drawn == [lm.bptt_length(10, g) for _ in drawn]
    assert torch.equal(replica.generators["dropout"].get_state(), g.get_state())
    # source=dropout varies them; source=init does not
    other, _ = _lengths_of_one_epoch(lm_config(tmp_path, "source=dropout", "replicate=2"), monkeypatch)
    init0, _ = _lengths_of_one_epoch(lm_config(tmp_path, "source=init", "replicate=0"), monkeypatch)
    init1, _ = _lengths_of_one_epoch(lm_config(tmp_path, "source=init", "replicate=1"), monkeypatch)
    assert other != drawn and init0 == init1


# --------------------------------------------------------------------------- text data


def _write_ptb(folder, names=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")):
    folder.mkdir(parents=True, exist_ok=True)
    texts = [" the cat sat \n a dog <unk> ran \n\n the end \n", " the dog sat \n", " a zebra sat \n"]
    for name, text in zip(names, texts):
        (folder / name).write_text(text)


def test_ptb_loader_reads_the_standard_files(tmp_path):
    _write_ptb(tmp_path)
    corpus = load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path))))
    assert corpus.vocab == ["the", "cat", "sat", "<eos>", "a", "dog", "<unk>", "ran", "end"]
    words = lambda t: [corpus.vocab[i] for i in t.tolist()]  # noqa: E731
    assert words(corpus.train) == ["the", "cat", "sat", "<eos>", "a", "dog", "<unk>", "ran",
                                   "<eos>", "<eos>", "the", "end", "<eos>"]
    assert words(corpus.valid) == ["the", "dog", "sat", "<eos>"]
    assert words(corpus.test) == ["a", "<unk>", "sat", "<eos>"]  # "zebra" is not in train
    assert corpus.train.dtype == torch.int64
    short = load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path), train_size=5)))
    assert torch.equal(short.train, corpus.train[:5])
    # AWD-LSTM's layout: data/penn/train.txt ...
    _write_ptb(tmp_path / "awd" / "penn", ("train.txt", "valid.txt", "test.txt"))
    other = load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path / "awd"))))
    assert other.vocab == corpus.vocab and torch.equal(other.test, corpus.test)


def test_ptb_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(TextNotFoundError, match="(?s)ptb.train.txt.*simple-examples.tgz.*dataset.root"):
        load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path))))
    (tmp_path / "x").mkdir()
    for name, text in (("ptb.train.txt", "a b\n"), ("ptb.valid.txt", "a\n"), ("ptb.test.txt", "c\n")):
        (tmp_path / "x" / name).write_text(text)
    with pytest.raises(ValueError, match="no <unk>"):
        load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path / "x"))))


def test_ptb_rewritten_in_place_is_never_resumed_under_the_old_runs(tmp_path, monkeypatch):
    """The Penn Treebank's files are part of the runs' identity (``dataset.sha256``), like an npz
    file: shuffled text trains new runs instead of resuming the old checkpoint, and a job whose
    files change after its runs were named refuses."""
    from conftest import kill_after_epoch
    from nondet import job

    root = tmp_path / "ptb"
    root.mkdir()
    words = [f"w{i}" for i in range(19)] + ["<unk>"]
    lines = [" ".join(words[(7 * i + j) % 20] for j in range(5)) for i in range(60)]
    for name, part in (("ptb.train.txt", lines), ("ptb.valid.txt", lines[:20]), ("ptb.test.txt", lines[20:40])):
        (root / name).write_text("\n".join(part) + "\n")
    overrides = [o for o in TINY_LM if not o.startswith("dataset")]
    compose = lambda: compose_config([f"output_root={tmp_path / 'out'}", *overrides, "dataset=ptb",  # noqa: E731
                                      f"dataset.root={root}", "source=init", "replicate=1"], tiny=False)
    old = compose()
    undo = kill_after_epoch(monkeypatch, 2)  # the checkpoint of epoch 1 stays
    run(old)
    undo()
    assert (records.run_dir(old) / "checkpoint.pt").exists()
    (root / "ptb.train.txt").write_text("\n".join(lines[30:] + lines[:30]) + "\n")  # the same words, shuffled
    new = compose()
    assert new["dataset"]["sha256"] != old["dataset"]["sha256"]
    assert records.run_dir(new) != records.run_dir(old)
    assert run(new)["finished"] == [str(records.run_dir(new))]
    env = json.loads((records.run_dir(new) / "env.json").read_text())
    assert env["resumed_from_epoch"] is None and env["data_sha256"] == new["dataset"]["sha256"]
    assert run(new)["skipped"]  # the corpus its job cached is the one its runs were named for
    assert (records.run_dir(old) / "checkpoint.pt").exists()
    # rewritten again while a job starts, between naming its runs and reading the text
    def rewritten_then_loaded(*args):
        (root / "ptb.train.txt").write_text("\n".join(lines) + "\n")
        return load_corpus(*args)

    monkeypatch.setattr(job, "_DATA_CACHE", {})
    monkeypatch.setattr(job, "load_corpus", rewritten_then_loaded)
    with pytest.raises(ValueError, match=f"dataset.root={root} changed while this job started"):
        run(new)


def test_synthetic_text_depends_on_its_data_seed_alone():
    cfg = DatasetConfig(name="synthetic_text", vocab_size=40, hidden_states=5, train_size=500,
                        valid_size=100, test_size=120)
    torch.manual_seed(0)
    a = synthetic_text(OmegaConf.structured(cfg))
    torch.manual_seed(1)
    b = synthetic_text(OmegaConf.structured(cfg))
    c = synthetic_text(OmegaConf.structured(DatasetConfig(**{**cfg.__dict__, "data_seed": 1})))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert (len(a.train), len(a.valid), len(a.test)) == (500, 100, 120)
    assert a.vocab[0] == "<eos>" and len(a.vocab) == 40
    assert int(a.train.min()) >= 0 and int(a.train.max()) < 40 and (a.train == 0).any()


# --------------------------------------------------------------------------- runs


def test_language_model_run_directory(sweep):
    _, dirs = sweep
    directory = dirs["bitflip", 0]
    for name in LM_FILES:
        assert (directory / name).is_file(), name
    assert not (directory / "logits.npy").exists() and not (directory / "checkpoint.pt").exists()
    metrics = records.read_metrics(directory / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) >= {"epoch", "test_accuracy", "test_cross_entropy", "test_perplexity",
                               "train_loss", "lr", "seconds"}
    target = np.load(directory / "target_logprobs.npy")
    predictions, labels = np.load(directory / "predictions.npy"), np.load(directory / "labels.npy")
    subset, positions = np.load(directory / "logprobs_subset.npy"), np.load(directory / "subset_positions.npy")
    assert target.dtype == np.float32 and predictions.dtype == labels.dtype == np.int64
    assert positions.dtype == np.int64 and subset.dtype == np.float32
    # 300 test tokens in 2 streams of 150: 149 targets each, stream 0 first (text order)
    assert target.shape == predictions.shape == labels.shape == (298,)
    corpus = synthetic_text(OmegaConf.structured(DatasetConfig(
        name="synthetic_text", vocab_size=30, hidden_states=4, train_size=1200, valid_size=300, test_size=300)))
    assert np.array_equal(labels, np.concatenate([corpus.test[1:150].numpy(), corpus.test[151:300].numpy()]))
    assert subset.shape == (50, 30) and np.all(np.diff(positions) > 0)
    assert np.array_equal(subset[np.arange(50), labels[positions]], target[positions])
    assert np.array_equal(subset.argmax(1), predictions[positions])
    result = json.loads((directory / "result.json").read_text())
    assert result["test_cross_entropy"] == pytest.approx(-target.astype(np.float64).mean(), rel=1e-12)
    assert result["test_perplexity"] == pytest.approx(math.exp(result["test_cross_entropy"]), rel=1e-12)
    assert result["test_accuracy"] == pytest.approx(100 * np.mean(predictions == labels))
    assert result["bitflip"]["param"] == "layers.0.linear.weight"
    seeds = json.loads((directory / "seeds.json").read_text())
    assert seeds["vary"] == ["bitflip"]
    # every run of the sweep stores the same positions
    assert np.array_equal(np.load(dirs["init", 1] / "subset_positions.npy"), positions)


def _same_run(a, b):
    same = all(np.array_equal(np.load(a / f).view(np.uint8), np.load(b / f).view(np.uint8))
               for f in ("target_logprobs.npy", "predictions.npy", "logprobs_subset.npy"))
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    return same and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_control_runs_are_bitwise_identical_and_sources_vary(sweep):
    _, dirs = sweep
    assert _same_run(dirs["none", 0], dirs["none", 1])
    for source in ("init", "dropout", "bitflip"):
        assert not np.array_equal(np.load(dirs[source, 0] / "target_logprobs.npy"),
                                  np.load(dirs[source, 1] / "target_logprobs.npy")), source


def test_a_run_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(3)
    state = torch.get_rng_state()
    run(lm_config(tmp_path, "source=all", "replicate=1", "epochs=1"))
    assert torch.equal(torch.get_rng_state(), state)


def test_resume_is_bitwise_exact_with_averaging(tmp_path, monkeypatch):
    # NT-ASGD is made to start at the end of epoch 3, whatever the validation loss does on this
    # CPU (the trigger sees a falling loss before, a rising one at epoch 3), so the checkpoint of
    # epoch 4 holds a running average.
    trigger = lm._start_averaging

    def starts_after_epoch_three(replica, valid_cross_entropy, nonmono):
        trigger(replica, -math.inf if replica.epoch < 3 else math.inf, nonmono)

    monkeypatch.setattr(lm, "_start_averaging", starts_after_epoch_three)
    overrides = ("source=all", "replicate=1", "epochs=5", "lm.nonmono=0")
    whole = lm_config(tmp_path / "whole", *overrides)
    run(whole)
    broken = lm_config(tmp_path / "broken", *overrides)
    real = lm.train_lm_epoch
    calls = {"n": 0}

    def dies_in_epoch_five(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(lm, "train_lm_epoch", dies_in_epoch_five)
    with pytest.raises(KeyboardInterrupt):
        run(broken)
    directory = records.run_dir(broken)
    state = torch.load(directory / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["averaged_steps"] > 0
    monkeypatch.setattr(lm, "train_lm_epoch", real)
    run(broken)
    a, b = records.run_dir(whole), directory
    assert _same_run(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(records.read_metrics(a / "metrics.jsonl")) == strip(records.read_metrics(b / "metrics.jsonl"))
    result = json.loads((b / "result.json").read_text())
    assert result["asgd_from_epoch"] == 3
    assert json.loads((b / "env.json").read_text())["resumed_from_epoch"] == 4
    # weights.pt is the evaluated model: the average, which reproduces the stored outputs
    corpus = load_corpus(OmegaConf.create(whole["dataset"]))
    model = build_language_model(OmegaConf.create(whole["model"]), corpus.vocab_size, make_generator(0))
    model.load_state_dict(torch.load(b / "weights.pt"))
    again = lm.evaluate_lm(model, corpus.test, 2, 10, "fp32")
    assert np.array_equal(again.target_logprobs, np.load(b / "target_logprobs.npy"))


def test_model_and_dataset_must_match(tmp_path):
    with pytest.raises(ValueError, match="dataset=synthetic_text"):
        run(compose_config([f"output_root={tmp_path}", "model=qrnn"]))
    with pytest.raises(ValueError, match="language model"):
        run(compose_config([f"output_root={tmp_path}", "dataset=synthetic_text"]))


def test_presets_compose():
    paper = compose_config(["+experiment=table2"], tiny=False)
    assert (paper["model"]["name"], paper["dataset"]["name"]) == ("qrnn", "ptb")
    assert (paper["model"]["embedding_dim"], paper["model"]["width"], paper["model"]["depth"]) == (256, 512, 3)
    assert paper["optimizer"]["lr"] == 30 and paper["optimizer"]["momentum"] == 0
    assert (paper["batch_size"], paper["lm"]["bptt"], paper["epochs"], paper["replicates"]) == (20, 70, 550, 100)
    smoke = compose_config(["+experiment=table4", "scale=smoke"], tiny=False)
    assert (smoke["dataset"]["name"], smoke["sweep_name"], smoke["replicates"]) == ("synthetic_text", "table4", 3)


# --------------------------------------------------------------------------- analysis


def test_lm_metrics_match_a_loop_over_pairs():
    g = np.random.default_rng(0)
    target = np.log(g.uniform(0.01, 1.0, size=(4, 50))).astype(np.float32)
    predictions = g.integers(0, 3, size=(4, 50))
    labels = g.integers(0, 3, size=50)
    row = lm_analysis.lm_group_metrics(target, predictions, labels, n_boot=50)
    ce = -target.astype(np.float64).mean(1)
    ppl = np.exp(ce)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert row["ppl_sd"] == pytest.approx(np.std(ppl, ddof=1))
    assert row["disagreement"] == pytest.approx(
        100 * np.mean([np.mean(predictions[i] != predictions[j]) for i, j in pairs]))
    p = np.exp(target.astype(np.float64))
    ens_ce = [-np.mean(np.log((p[i] + p[j]) / 2)) for i, j in pairs]
    assert row["ensemble_delta_cross_entropy"] == pytest.approx(
        np.mean([e - (ce[i] + ce[j]) / 2 for e, (i, j) in zip(ens_ce, pairs)]), rel=1e-9)
    assert row["ensemble_delta_ppl"] == pytest.approx(
        np.mean([np.exp(e) - (ppl[i] + ppl[j]) / 2 for e, (i, j) in zip(ens_ce, pairs)]), rel=1e-9)
    assert row["ensemble_delta_ppl"] < 0
    same = lm_analysis.lm_group_metrics(target[[0, 0]], predictions[[0, 0]], labels, n_boot=50)
    assert (same["ppl_sd"], same["disagreement"], same["ensemble_delta_ppl"]) == (0.0, 0.0, 0.0)


def test_summary_table_of_a_language_model_sweep(sweep):
    root, _ = sweep
    loaded = load_sweep(root)
    assert all(group.is_language_model for group in loaded.groups) and not loaded.problems
    text = summarize(root, n_boot=20)
    assert "| Source | Runs | PPL | PPL SD |" in text and "Ensemble Δ PPL" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(lines) >= {"none", "init", "dropout", "bitflip"}
    assert "| 0.000 ± 0.000 |" in lines["none"]  # the control: no spread at all
