"""Every option of every config group composes; typos and unknown options fail at compose time."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF, compose_config
from nondet import records
from nondet.config import ConfigError, check_config
from nondet.job import job_subdir
from nondet.seeds import PAPER_SOURCES, SOURCES

GROUPS = ["model", "dataset", "optimizer", "schedule", "source"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    for option in options(group):
        config = compose_config([f"{group}={option}"], tiny=False)
        assert config[group]["name"] == option


def test_every_model_has_a_config_file_and_the_design_groups_exist():
    from nondet.models import LANGUAGE_MODEL_NAMES, MODEL_NAMES

    # custom: your own nn.Module (nondet/usermodel.py), built from its _target_.
    assert set(options("model")) == set(MODEL_NAMES) | set(LANGUAGE_MODEL_NAMES) | {"custom"}
    assert set(options("dataset")) >= {"synthetic", "cifar10", "mnist", "npz"}
    assert set(options("optimizer")) >= {"sgd", "adam"}
    assert set(options("schedule")) >= {"constant", "cosine", "snapshot"}
    assert set(options("source")) >= {"none", "all", "shuffle_lowlevel", *SOURCES}


def test_schema_defaults_are_the_yaml_defaults():
    """conf/config.yaml's keys, and every key that each file of a group sets, have as schema
    default the value of config.yaml or of its default group's file (keys only some files of a
    group set keep the value the other files mean: dataset.train_size null is all of cifar10)."""
    import yaml
    from omegaconf import OmegaConf

    from nondet.config import NondetConfig

    schema = OmegaConf.to_container(OmegaConf.structured(NondetConfig))
    top = yaml.safe_load((CONF / "config.yaml").read_text())
    for key in set(top) - {"defaults", "hydra"}:
        assert schema[key] == top[key], key
    chosen = {k: v for d in top["defaults"] if isinstance(d, dict) for k, v in d.items()}
    for group in GROUPS:
        files = {o: yaml.safe_load((CONF / group / f"{o}.yaml").read_text()) or {} for o in options(group)}
        # A group's schema node holds the defaults of the file it names: the default's file, except
        # for dataset, whose schema keeps synthetic's keys while the default is mnist1d.
        named = schema[group]["name"] if group in schema and "name" in schema[group] else chosen[group]
        assert named == chosen[group] or (group, named, chosen[group]) == ("dataset", "synthetic", "mnist1d")
        for key in set.intersection(*(set(f) for f in files.values())):
            assert schema[group][key] == files[named][key], f"{group}.{key}"


def test_schema_defaults_keep_every_group_hash():
    """Run directories of finished sweeps stay where they are."""
    hashes = {
        # The embedded default until it became mnist1d (24 epochs).
        ("dataset=synthetic", "epochs=12"): "none-mlp-synthetic-83ffc5f5e8",
        ("dataset=synthetic", "epochs=12", "schedule=constant"): "none-mlp-synthetic-95aebfb6a5",
        ("dataset=synthetic", "epochs=12", "optimizer=adam"): "none-mlp-synthetic-c9de4d8a11",
        ("+experiment=table1",): "none-resnet14-cifar10-20dcdc8f40",
        ("+experiment=table2", "scale=smoke"): "none-qrnn-synthetic_text-c20ea526f0",
    }
    for overrides, name in hashes.items():
        assert records.group_dirname(compose_config(list(overrides), tiny=False)) == name, overrides


def test_every_source_varies_known_sources():
    for option in options("source"):
        vary = compose_config([f"source={option}"])["source"]["vary"]
        assert set(vary) <= set(SOURCES), option
    assert compose_config(["source=none"])["source"]["vary"] == []
    assert set(compose_config(["source=all"])["source"]["vary"]) == set(PAPER_SOURCES)  # not data


def test_defaults_are_the_embedded_run():
    config = compose_config(tiny=False)
    assert (config["model"]["name"], config["dataset"]["name"]) == ("mlp", "mnist1d")
    assert config["epochs"] == 24 and config["batch_size"] == 32
    assert config["replicates"] == 8 and config["precision"] == "fp32"
    assert config["device"] in ("cpu", "cuda")  # `auto` is resolved


@pytest.mark.parametrize(
    "override",
    ["model.widht=3", "dataset.sise=3", "epochs=ten", "not_a_key=1", "dataset.augment=maybe"],
)
def test_typos_fail_at_compose_time(override):
    # model and dataset take your own keys (model/my_net.yaml), so check_config (run by the
    # compose callback) refuses their typos; Hydra refuses the others itself
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError, HydraException, ConfigError)):
        check_config(compose_config([override]))


def test_unknown_source_lists_the_options():
    with pytest.raises(ConfigCompositionException, match="(?s)source.*Available options.*shuffle"):
        compose_config(["source=shufle"])


def test_sweep_over_replicates_is_declared():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["replicates=30", "pack=5"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.replicate == "range(0,30,5)"
    assert cfg.hydra.sweep.dir == "outputs/default"


def test_run_directory_is_a_function_of_the_config():
    a = compose_config(["source=init", "replicate=3"])
    b = compose_config(["source=init", "replicate=3"])
    assert records.run_dir(a) == records.run_dir(b)
    assert records.run_dir(a).name == "r0003"
    # replicates and the sweep's location do not change which group a run belongs to ...
    c = compose_config(["source=init", "replicate=3", "replicates=100"])
    assert records.run_dir(c) == records.run_dir(a)
    # ... but anything that changes what is trained does.
    for other in (["source=shuffle"], ["model.width=17"], ["base_seed=1"]):
        d = compose_config(["source=init", "replicate=3", *other])
        assert records.group_dirname(d) != records.group_dirname(a), other
    # The pack size counts only where a pack may compute otherwise than solo: pack=P on a GPU.
    for pack in ("pack=2", "pack=auto"):
        d = compose_config(["source=init", "replicate=3", pack])
        assert records.run_dir(d) == records.run_dir(a), pack
    on_gpu = lambda config: {**config, "device": "cuda"}  # noqa: E731
    assert records.group_dirname(on_gpu(compose_config(["source=init", "pack=2"]))) != records.group_dirname(on_gpu(a))
    assert records.group_dirname(on_gpu(compose_config(["source=init", "pack=auto"]))) == records.group_dirname(on_gpu(a))
    assert job_subdir(a) == f"{records.group_dirname(a)}/r0003"
    packed = compose_config(["pack=4", "replicate=4", "replicates=6"])
    assert job_subdir(packed).endswith("pack-r0004-r0005")


@pytest.mark.parametrize(
    "args, message",
    [
        (["source=shufle"], "Could not find 'source/shufle'"),
        (["source=lowlevel"], "source=reduction"),
        (["dataset=cifar10", "dataset.root=/nonexistent"], "cifar-10"),
        # A source that cannot vary anything would report zero spread as a finding.
        (["source=augment"], "dataset.augment is false (set dataset.augment=true)"),
        (["source=dropout"], "model.dropout is 0"),
        (["replicate=5", "pack=1"], "replicate=5 is outside range(0, replicates=2)"),
    ],
)
def test_bad_input_is_refused_before_anything_trains(tmp_path, args, message):
    """Mistakes in a configuration, composed and run in-process as a job would be: each is refused
    with a message that names it, before anything trains."""
    from omegaconf import OmegaConf

    from nondet.job import run_job

    SMALL = ("replicates=2", "epochs=1", "device=cpu")

    with pytest.raises(Exception) as raised:
        run_job(OmegaConf.create(compose_config([f"output_root={tmp_path}", *args, *SMALL])))
    assert message in str(raised.value)
    assert not list(tmp_path.rglob("result.json"))
