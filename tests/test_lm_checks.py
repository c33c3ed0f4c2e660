"""Language-model runs refused at launch (splits too short for their streams, a model that
cannot be built, lowlevel on a CPU, text that is not UTF-8) and read by the analysis (stored
arrays that contradict result.json, diverged runs, data changed under a sweep). Runs the
analysis reads are written directly (``write_lm_run``); one run trains, for the overflow of a
perplexity."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from analysis.load import load_sweep
from analysis.tables import summarize
from conftest import compose_config
from fake_runs import fake_config
from nondet import lm, records
from nondet.backend import LowLevelUnavailableError
from nondet.config import ConfigError, DatasetConfig
from nondet.job import check_job, run_job
from nondet.text import load_corpus
from test_lm import TINY_LM

N, V = 40, 7  # test tokens, vocabulary


def lm_fake_config(root, source="init", **overrides):
    return fake_config(**{"model.name": "qrnn", "dataset.name": "synthetic_text", "source.name": source,
                          "source.vary": [] if source == "none" else [source],
                          "output_root": str(root), "sweep_name": "sweep", **overrides})


def write_lm_run(config, target_logprobs, predictions, labels, **result):
    """A finished language-model run as the engine writes it (its arrays, a result.json
    computed from them unless ``result`` says otherwise)."""
    directory = records.run_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    records.write_config(directory, config)
    records.write_npy(directory / records.TARGET_LOGPROBS_FILE, np.asarray(target_logprobs, dtype=np.float32))
    records.write_npy(directory / records.PREDICTIONS_FILE, np.asarray(predictions, dtype=np.int64))
    records.write_npy(directory / records.LABELS_FILE, np.asarray(labels, dtype=np.int64))
    ce = -float(np.mean(np.asarray(target_logprobs, dtype=np.float32).astype(np.float64)))
    records.write_json(directory / records.RESULT_FILE, {
        "test_accuracy": float(100 * np.mean(np.asarray(predictions) == labels)), "test_cross_entropy": ce,
        "test_perplexity": math.exp(min(ce, 709.0)) if ce <= 709 else math.inf, "train_seconds": 1.0, **result})
    return directory


def write_lm_group(config, runs=2, seed=0, target=None):
    g = np.random.default_rng(seed)
    labels = np.arange(N) % V
    paths = []
    for r in range(runs):
        logp = np.log(g.uniform(0.05, 1.0, N)) if target is None else target
        paths.append(write_lm_run(dict(config, replicate=r, replicates=runs), logp, g.integers(0, V, N), labels))
    return paths


def check(tmp_path, *overrides):
    check_job(OmegaConf.create(compose_config([f"output_root={tmp_path}", *TINY_LM, *overrides], tiny=False)),
              local=True)


# --------------------------------------------------------------------------- launch


@pytest.mark.parametrize("overrides, key", [
    (["dataset.valid_size=15", "lm.eval_batch_size=10"], "lm.eval_batch_size=10"),
    (["dataset.test_size=15", "lm.test_batch_size=10"], "lm.test_batch_size=10"),
    (["dataset.train_size=30", "batch_size=20"], "batch_size=20"),
    (["dataset.train_size=40", "batch_size=20"], "batch_size=20"),  # 2 a stream: no window to train
])
def test_a_split_too_short_for_its_streams_is_refused_at_launch(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"split's \\d+ tokens cannot be cut into {key} streams.*dataset"):
        check(tmp_path, "source=init", *overrides)


def test_batchify_names_the_key_of_its_split():
    with pytest.raises(ConfigError, match="lm.eval_batch_size=10 .* at most 7, or dataset.valid_size to at least 20"):
        lm.batchify(torch.arange(15), 10, "valid")


def test_a_language_model_that_cannot_be_built_is_refused_at_launch(tmp_path):
    with pytest.raises(ConfigError, match="bitflip.param=nope is not a parameter of QRNNLanguageModel"):
        check(tmp_path, "source=bitflip", "bitflip.param=nope")


@pytest.mark.parametrize("source", ["lowlevel", "shuffle_lowlevel"])
def test_lowlevel_on_a_cpu_advises_sources_a_language_model_has(tmp_path, source):
    with pytest.raises(LowLevelUnavailableError) as refused:
        check(tmp_path, f"source={source}")
    assert "source=dropout" in str(refused.value) and "Use source=reduction" not in str(refused.value)
    assert "shuffle_reduction" not in str(refused.value)


def test_ptb_that_is_not_utf8_names_the_file(tmp_path):
    for name, text in (("ptb.train.txt", "a b <unk>\n"), ("ptb.valid.txt", "a\n"), ("ptb.test.txt", "b\n")):
        (tmp_path / name).write_text(text)
    (tmp_path / "ptb.test.txt").write_bytes(b"a\ncaf\xe9 b\n")  # Latin-1
    with pytest.raises(ConfigError, match=f"{tmp_path / 'ptb.test.txt'} is not UTF-8 text .*line 2.*iconv"):
        load_corpus(OmegaConf.structured(DatasetConfig(name="ptb", root=str(tmp_path))))


# --------------------------------------------------------------------------- divergence


def test_a_perplexity_past_the_float_range_is_inf():
    assert lm.perplexity(1000.0) == math.inf and math.isnan(lm.perplexity(math.nan))
    evaluation = lm.LMEvaluation(np.full(3, -1000.0, np.float32), np.zeros(3, np.int64), np.zeros(3, np.int64),
                                 None, None)
    assert evaluation.perplexity == math.inf


def test_a_run_diverged_to_a_finite_cross_entropy_is_kept_and_named(tmp_path, monkeypatch):
    """Cross-entropy 1000 nats (a run trained at a learning rate far too high) is finite, its
    perplexity not: the run finishes, and the analysis names it diverged."""
    evaluate = lm.evaluate_lm

    def diverged(*args, **kwargs):
        out = evaluate(*args, **kwargs)
        out.target_logprobs = out.target_logprobs - np.float32(1000.0)
        return out

    monkeypatch.setattr(lm, "evaluate_lm", diverged)
    config = compose_config([f"output_root={tmp_path}", *TINY_LM, "source=init", "epochs=1"], tiny=False)
    outcome = run_job(OmegaConf.create(config))
    assert outcome["finished"] and not outcome["failed"], outcome
    result = json.loads((records.run_dir(config) / "result.json").read_text())
    assert result["test_perplexity"] == math.inf and result["test_cross_entropy"] > 1000
    sweep = load_sweep(tmp_path)
    assert not sweep.problems
    assert any("1 of 1 runs diverged (non-finite test cross-entropy, perplexity or target log-probabilities"
               in n for n in sweep.notes), sweep.notes


def test_a_group_whose_runs_all_diverged_keeps_the_language_model_columns(tmp_path):
    write_lm_group(lm_fake_config(tmp_path, "init"), target=np.full(N, np.nan))
    text = summarize(tmp_path, n_boot=10)
    assert "| Source | Runs | PPL | PPL SD |" in text and "Spearman" not in text
    assert "2 of 2 runs diverged" in text and "varied nothing" not in text


# --------------------------------------------------------------------------- stored arrays


def test_target_logprobs_that_contradict_result_json_name_the_run_corrupt(tmp_path):
    first, second, third = write_lm_group(lm_fake_config(tmp_path, "init"), runs=3)
    logp = np.load(second / "target_logprobs.npy")
    records.write_npy(second / "target_logprobs.npy", logp - np.float32(0.5))  # PPL x 1.65, silently
    result = json.loads((third / "result.json").read_text())
    records.write_json(third / "result.json", {**result, "test_perplexity": 2 * result["test_perplexity"]})
    sweep = load_sweep(tmp_path)
    assert [len(g.runs) for g in sweep.groups] == [1]
    reasons = {p.path: p.reason for p in sweep.problems if p.status == "corrupt"}
    assert "test_cross_entropy" in reasons[second] and "target_logprobs.npy gives" in reasons[second]
    assert "test_perplexity" in reasons[third] and "target_logprobs.npy gives" in reasons[third]


def test_language_model_runs_on_different_test_sets_say_target_log_probabilities(tmp_path):
    config = lm_fake_config(tmp_path, "init")
    write_lm_group(config)
    g = np.random.default_rng(1)
    write_lm_run(dict(config, replicate=2, replicates=2), np.log(g.uniform(0.1, 1, N - 5)),
                 np.zeros(N - 5), np.arange(N - 5) % V)
    (note,) = [n for n in load_sweep(tmp_path).notes if "different test sets" in n]
    assert f"(target log-probabilities ({N},))" in note and "logits" not in note


# --------------------------------------------------------------------------- data changed


@pytest.mark.parametrize("language_model", [True, False])
def test_rows_of_one_sweep_trained_on_different_data_are_named(tmp_path, language_model):
    """The data file rewritten between the jobs of a sweep: its init and dropout rows differ in
    more than their content, yet trained on different data."""
    dataset = {"dataset.name": "ptb", "dataset.root": "/data/ptb"} if language_model else {
        "dataset.name": "npz", "dataset.path": "/data/d.npz"}
    for seed, (source, sha) in enumerate((("init", "a" * 64), ("dropout", "b" * 64))):
        config = lm_fake_config(tmp_path, source, **dataset, **{"dataset.sha256": sha})
        if not language_model:
            config["model"]["name"] = "mlp"
            from fake_runs import random_logits, write_group

            write_group(config, random_logits(np.random.default_rng(seed), 2, N, V), np.arange(N) % V)
        else:
            write_lm_group(config, seed=seed)
    notes = [n for n in load_sweep(tmp_path).notes if "SHA-256" in n]
    assert len(notes) == 1 and "under the sweep" in notes[0], notes
    assert "aaaaaaaaaaaa: init (2 runs)" in notes[0] and "bbbbbbbbbbbb: dropout (2 runs)" in notes[0]


def test_a_killed_run_of_old_data_is_not_called_resumable(tmp_path):
    root = tmp_path / "ptb"
    root.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (root / name).write_text("a b <unk>\n")
    now = compose_config([f"output_root={tmp_path}", "dataset=ptb", f"dataset.root={root}", "model=qrnn"],
                         tiny=False)["dataset"]["sha256"]
    for sha, name in ((now, "current"), (hashlib.sha256(b"old").hexdigest(), "old")):
        config = lm_fake_config(tmp_path / name, "init", **{"dataset.name": "ptb", "dataset.root": str(root),
                                                            "dataset.sha256": sha})
        directory = records.run_dir(config)
        directory.mkdir(parents=True)
        records.write_config(directory, config)
        (directory / "checkpoint.pt").write_bytes(b"")
    (current,) = load_sweep(tmp_path / "current").problems
    (old,) = load_sweep(tmp_path / "old").problems
    assert "(resumable)" in current.reason
    assert "trained on the old data" in old.reason and "not resumable by relaunching" in old.reason
