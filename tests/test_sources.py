"""The seed model: varying one source changes exactly what it should and nothing else.

Each test trains one epoch of two replicates and watches what the model sees: its initial
weights, the batches fed to it (a forward pre-hook), and its dropout masks. Exact comparisons.
"""

from __future__ import annotations

import math

import pytest
import torch

from nondet.bitflip import flip_one_ulp
from nondet.data import load_dataset
from nondet.models import SeededDropout, build_model, first_layer_weight
from nondet.seeds import SEEDABLE, SeedPlan, derive_seed, make_generator
from nondet.pack import new_replica, train_epoch
from nondet.train import start_of_epoch
from omegaconf import OmegaConf


def watch_one_epoch(config):
    """Initial weights, input batches and dropout outputs of one epoch of one replica."""
    data = load_dataset(OmegaConf.create(config["dataset"]), "cpu")
    replica = new_replica(config, data)
    start_of_epoch(replica, config)
    initial = {k: v.clone() for k, v in replica.model.state_dict().items()}
    batches, masks = [], []
    replica.model.register_forward_pre_hook(lambda m, args: batches.append(args[0].clone()))
    for module in replica.model.modules():
        if isinstance(module, SeededDropout):
            module.register_forward_hook(lambda m, args, out: masks.append(out == 0))
    train_epoch(replica, config, data)
    return initial, batches, masks


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def examples(batch):
    """The multiset of rows of a batch, order forgotten."""
    return sorted(map(tuple, batch.flatten(1).tolist()))


def two_replicates(make_config, source, *extra):
    return [watch_one_epoch(make_config(f"source={source}", f"replicate={r}", *extra)) for r in (0, 1)]


def test_derived_seeds_depend_on_all_three_and_differ_from_base():
    seeds = {derive_seed(b, s, r) for b in (0, 1) for s in SEEDABLE for r in range(5)}
    assert len(seeds) == 2 * len(SEEDABLE) * 5
    assert 0 not in seeds and 1 not in seeds
    assert derive_seed(0, "init", 3) == derive_seed(0, "init", 3)


def test_only_varied_sources_leave_the_base_seed():
    plan = SeedPlan.for_run(base_seed=7, vary=["shuffle", "dropout"], replicate=2)
    assert {s for s, seed in plan.seeds.items() if seed != 7} == {"shuffle", "dropout"}
    with pytest.raises(ValueError, match="unknown source"):
        SeedPlan.for_run(base_seed=0, vary=["shufle"], replicate=0)


def test_none_gives_identical_everything(make_config):
    (w0, b0, _), (w1, b1, _) = two_replicates(make_config, "none")
    assert same_state(w0, w1) and same_batches(b0, b1)


def test_init_changes_weights_not_data_order(make_config):
    (w0, b0, _), (w1, b1, _) = two_replicates(make_config, "init")
    assert not same_state(w0, w1)
    assert same_batches(b0, b1)


def test_shuffle_changes_batch_order_not_weights(make_config):
    (w0, b0, _), (w1, b1, _) = two_replicates(make_config, "shuffle")
    assert same_state(w0, w1)
    assert not same_batches(b0, b1)
    assert examples(torch.cat(b0)) == examples(torch.cat(b1))  # the same examples, reordered


def test_reduction_changes_order_within_batches_only(make_config):
    (w0, b0, _), (w1, b1, _) = two_replicates(make_config, "reduction")
    assert same_state(w0, w1)
    assert not same_batches(b0, b1)
    for x, y in zip(b0, b1):  # each batch holds the same examples
        assert examples(x) == examples(y)


def test_dropout_changes_masks_only(make_config):
    (w0, b0, m0), (w1, b1, m1) = two_replicates(make_config, "dropout", "model.dropout=0.5")
    assert same_state(w0, w1) and same_batches(b0, b1)
    assert m0 and not torch.equal(m0[0], m1[0])


def test_dropout_source_is_inert_without_dropout(make_config):
    (w0, b0, m0), (w1, b1, _) = two_replicates(make_config, "dropout")
    assert same_state(w0, w1) and same_batches(b0, b1)


def test_augment_changes_crops_only(make_config):
    image = ["dataset.image_shape=[3,8,8]", "dataset.augment=true"]
    (w0, b0, _), (w1, b1, _) = two_replicates(make_config, "augment", *image)
    assert same_state(w0, w1)
    assert not same_batches(b0, b1)
    # with augmentation fixed the crops repeat exactly
    (_, c0, _), (_, c1, _) = two_replicates(make_config, "none", *image)
    assert same_batches(c0, c1)


def test_bitflip_changes_one_weight_by_one_ulp(make_config):
    control, control_batches, _ = watch_one_epoch(make_config("source=none"))
    flipped_elements = set()
    for replicate in (0, 1):
        weights, batches, _ = watch_one_epoch(make_config("source=bitflip", f"replicate={replicate}"))
        assert same_batches(batches, control_batches)
        differing = [k for k in control if not torch.equal(control[k], weights[k])]
        assert len(differing) == 1
        name = differing[0]
        changed = (control[name] != weights[name]).nonzero()
        assert len(changed) == 1
        index = tuple(changed[0].tolist())
        before, after = control[name][index], weights[name][index]
        assert after in (
            torch.nextafter(before, torch.tensor(math.inf)),
            torch.nextafter(before, torch.tensor(-math.inf)),
        )
        assert abs(int(after.view(torch.int32)) - int(before.view(torch.int32))) == 1
        flipped_elements.add((name, index))
    assert len(flipped_elements) == 2  # each replicate flips its own weight


def test_flip_one_ulp_record_is_exact():
    from nondet.config import ModelConfig

    model = build_model(OmegaConf.structured(ModelConfig(width=8)), (5,), 3, make_generator(0))
    name, weight = first_layer_weight(model)
    original = weight.detach().clone()
    record = flip_one_ulp(model, make_generator(123))
    assert record["param"] == name
    diff = (weight.detach() != original).view(-1).nonzero().view(-1).tolist()
    assert diff == [record["index"]]
    before = original.view(-1)[record["index"]]
    after = weight.detach().view(-1)[record["index"]]
    assert float.fromhex(record["before"]) == float(before)
    assert float.fromhex(record["after"]) == float(after)
    direction = math.inf if record["direction"] == "up" else -math.inf
    assert torch.equal(after, torch.nextafter(before, torch.tensor(direction)))
    assert abs(int(after.view(torch.int32)) - int(before.view(torch.int32))) == 1
    # the flip is chosen by the bitflip generator alone
    model2 = build_model(OmegaConf.structured(ModelConfig(width=8)), (5,), 3, make_generator(0))
    assert flip_one_ulp(model2, make_generator(123)) == record


def test_generators_are_separate_and_never_touch_the_global_rng(make_config):
    state = torch.get_rng_state()
    watch_one_epoch(make_config("source=all", "replicate=1", "model.dropout=0.2"))
    assert torch.equal(torch.get_rng_state(), state)
