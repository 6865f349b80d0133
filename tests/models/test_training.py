"""models/training.py and models/attention.py: learning, example wire format, fused evaluation, bootstrap."""
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import AttentionRecommender, publish_bootstrap
from models.config import EngineConfig
from models.events import EventLog
from models.params import from_bytes
from models.store import MemoryStore
from models import kernels
from models.params import COUNTED, POPULARITY_PRIORS, init_params, learned
from models.training import (TrainConfig, Trainer, TransitionCounts, _loss, examples_from_bytes,
                             examples_to_messages, sampled, sampled_losses, sparse_train_step, to_batch,
                             toy_examples)

CFG = EngineConfig(dim=8, history=5, scenes=("default", "search"), k=3, initial_capacity=16,
                   buckets=(8, 32, 128), max_batch=128)


@pytest.mark.parametrize("negatives", [0, 2])  # 2: the 16-row table trains on the sampled softmax
def test_trainer_learns_a_toy_successor_task(negatives):
    assert sampled(negatives, CFG.initial_capacity) == (negatives > 0)
    trainer = Trainer(CFG, TrainConfig(batch_size=32, history_dropout=0.0, replay_steps=1, learning_rate=1e-2,
                                       negatives=negatives))
    examples = toy_examples(CFG, n=256, n_items=12)
    losses = [trainer.learn(examples, n_items=12) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.steps == 20 * (256 // 32) * 2


def test_sampled_softmax_estimates_the_full_normaliser():
    """exp(sampled loss) = Z_hat / exp(target score), and Z_hat is an unbiased estimate of the full softmax's
    Z: averaged over many draws it must match the full softmax's exp(loss) for every example, including
    targets inside the history, repeated history items and empty history slots."""
    import jax

    cfg = EngineConfig(dim=8, history=6, scenes=("default",), k=3, initial_capacity=512)
    rng = np.random.default_rng(0)
    params = init_params(cfg)
    params = params._replace(item_emb=params.item_emb * 2.0,
                             item_bias=jnp.asarray(rng.normal(0, 1, 512), jnp.float32),
                             copy=jnp.asarray(1.5, jnp.float32))
    n_items, E = 400, 6
    hist = rng.integers(0, 40, (E, 6)).astype(np.int32)
    hist[0, :3] = -1                                  # a short history
    hist[1, 2:] = hist[1, 1]                          # one item repeated
    target = rng.integers(0, n_items, E).astype(np.int32)
    target[2] = hist[2, 4]                            # the target is in the history
    user = jnp.asarray(rng.normal(0, 1, (E, 8)), jnp.float32)
    scores = user @ params.item_emb.T + params.item_bias
    full = kernels.copy_scores(scores, 0, jnp.asarray(hist), params)[:, :n_items]
    want = np.exp(np.asarray(jax.nn.logsumexp(full, axis=1) - full[jnp.arange(E), target]))
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    draw = jax.jit(jax.vmap(lambda key: sampled_losses(params, user, jnp.asarray(hist), jnp.asarray(target),
                                                       jax.random.randint(key, (64,), 0, n_items),
                                                       jnp.int32(n_items))))
    got = np.exp(np.asarray(draw(keys))).mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=0.03)


def test_row_sparse_step_is_adamw_on_the_rows_it_uses():
    """From a fresh optimiser state, one row-sparse step must equal one dense optax AdamW step on the same
    sampled loss, for every parameter but the item rows the batch did not use; those (and, over more
    steps, every row no batch used) stay exactly as they were: "lazy" AdamW, weight decay included."""
    import jax
    import optax

    cfg = EngineConfig(dim=8, history=5, scenes=("default",), k=3, initial_capacity=256)
    train = TrainConfig(batch_size=16, negatives=8, history_dropout=0.2, weight_decay=0.01,
                        learning_rate=0.01)
    optimizer = optax.adamw(train.learning_rate, weight_decay=train.weight_decay)
    batch = to_batch(toy_examples(cfg, n=12, n_items=100, seed=4), 16)
    key, n_items = jax.random.PRNGKey(7), jnp.int32(100)
    # transitions counted from other examples: the batch's histories have neighbours outside the batch
    counts = TransitionCounts()
    other = toy_examples(cfg, n=200, n_items=100, seed=5)
    counts.observe(other.hist_item, (other.target * 7) % 100, other.scene)
    counted = counts.arrays(256)
    start = learned(init_params(cfg))
    drawn = jax.random.randint(jax.random.fold_in(key, 1), (8,), 0, n_items)
    with jax.default_matmul_precision("highest"):  # as the step itself (GPUs default to TF32)
        loss, grads = jax.value_and_grad(_loss)(start, counted, batch, n_items, key, train.history_dropout,
                                                drawn)
    updates, _ = optimizer.update(grads, optimizer.init(start), start)
    want = optax.apply_updates(start, updates)
    got, state, got_loss = sparse_train_step(learned(init_params(cfg)), optimizer.init(start), counted, batch,
                                             n_items, key, optimizer=optimizer, dropout=train.history_dropout,
                                             train=train)
    np.testing.assert_allclose(float(got_loss), float(loss), rtol=1e-5)
    neighbours, _ = kernels.neighbour_pairs(start._replace(**counted), batch.hist_item, batch.scene)
    assert (np.asarray(neighbours) >= 0).sum() > 50
    used = np.array(sorted((set(np.asarray(batch.hist_item).ravel()) | set(np.asarray(batch.target))
                            | set(np.asarray(drawn)) | set(np.asarray(neighbours).ravel())) - {-1}))
    for name in start._fields:
        if name in COUNTED:
            continue
        a, b, g = (np.asarray(getattr(tree, name)) for tree in (got, want, grads))
        if name.startswith("item_"):
            a, b, g = a[used], b[used], g[used]
        # Adam's first step moves a parameter by about lr * sign(gradient), so a gradient at rounding
        # level (a structural zero) may move it either way: a GPU sums the two graphs in other orders.
        # Those elements (and gradients below 1e-9, float32 summation noise) are held to the step's
        # bound; all others must match.
        noise = np.abs(g) <= max(1e-6 * float(np.abs(g).max()), 1e-9)
        np.testing.assert_allclose(a[~noise], b[~noise], rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.all(np.abs(a[noise] - b[noise]) <= 2.2 * train.learning_rate), name
    assert int(state[0].count) == 1
    used = set(used)
    for step in range(1, 4):
        got, state, _ = sparse_train_step(got, state, counted, batch, n_items, jax.random.PRNGKey(step),
                                          optimizer=optimizer, dropout=0.0, train=train)
        step_key = jax.random.fold_in(jax.random.PRNGKey(step), 1)
        used |= set(np.asarray(jax.random.randint(step_key, (8,), 0, 100)))
    untouched, used = np.array(sorted(set(range(256)) - used)), np.array(sorted(used))
    for name in ("item_emb", "item_bias"):
        after, before = np.asarray(getattr(got, name)), np.asarray(getattr(start, name))
        np.testing.assert_array_equal(after[untouched], before[untouched])
        assert not np.allclose(after[used], before[used])
        np.testing.assert_array_equal(np.asarray(getattr(state[0].mu, name))[untouched], 0.0)


@pytest.mark.parametrize("negatives", [0, 2])
def test_trainer_grows_with_the_catalogue(negatives):
    trainer = Trainer(CFG, TrainConfig(batch_size=8, replay_steps=0, negatives=negatives))
    trainer.learn(toy_examples(CFG, n=8, n_items=12), n_items=12)
    trainer.learn(toy_examples(CFG, n=8, n_items=40), n_items=40)
    assert trainer.steps == 2 and np.isfinite(trainer.last_loss)
    assert trainer.params.item_emb.shape[0] == 64
    assert trainer.opt_state[0].mu.item_emb.shape[0] == 64


def test_examples_wire_format_rejects_foreign_layouts():
    examples = toy_examples(CFG, n=3, n_items=7)
    [blob] = examples_to_messages(examples, CFG)
    back = examples_from_bytes(blob, CFG)
    assert np.array_equal(back.hist_item, examples.hist_item) and np.array_equal(back.target, examples.target)
    with pytest.raises(ValueError, match="whole number"):
        examples_from_bytes(blob[:-1], CFG)


def test_fused_ranking_equals_event_by_event_ranking():
    """With learning switched off, ranking inside one batch (users repeating) must equal ranking one event
    at a time from the same state: the fused path sees exactly each event's pre-event history."""
    rng = np.random.default_rng(3)
    n = 60
    users = [f"u{u}" for u in rng.integers(0, 4, n)]   # drawn in this order: users, items, types
    items = [f"i{i}" for i in range(10)] + [f"i{i}" for i in rng.integers(0, 10, n - 10)]
    log = EventLog.from_columns("toy", users, items, rng.integers(0, 4, n), np.arange(n, dtype=float))
    # choosing the served repeat offset is learning too: off
    frozen = TrainConfig(learning_rate=0.0, batch_size=8, replay_steps=0, repeat_offsets=(), pop_boosts=(),
                         nbr_offsets=())
    fused = AttentionRecommender(CFG, frozen)
    single = AttentionRecommender(CFG, frozen)
    fused.learn(log.user[:10], log.item[:10], log.type[:10], log.scene[:10], log.ts[:10])
    single.learn(log.user[:10], log.item[:10], log.type[:10], log.scene[:10], log.ts[:10])
    # interest vectors are folded per batch in the fused path; switch the transfer term off to compare
    for model in (fused, single):
        model.trainer.params = model.trainer.params._replace(transfer=jnp.asarray(-1e4, jnp.float32))
        model.trainer.counts.observe = lambda *_: None   # counting is learning too: frozen as well
    got = fused.recommend_then_learn(log.user[10:], log.item[10:], log.type[10:], log.scene[10:], log.ts[10:],
                                     k=3)
    for j in range(10, n):
        e = slice(j, j + 1)
        want = single.recommend(log.user[e], log.scene[e], log.ts[e], k=3)
        assert got[j - 10].tolist() == want[0].tolist(), j
        single.learn(log.user[e], log.item[e], log.type[e], log.scene[e], log.ts[e])


def test_bootstrap_snapshot_is_aligned_to_the_shared_catalogue():
    store = MemoryStore()
    store.item_index(["other", "b"])                  # the running pipeline already knows two items
    log = EventLog.from_columns("toy", ["u"] * 4, ["a", "b", "c", "a"], [0] * 4, np.arange(4.0))
    model = AttentionRecommender(CFG, TrainConfig(batch_size=4, replay_steps=0), epochs=1)
    model.fit(log)
    version = publish_bootstrap(model, log, store)
    params, meta = from_bytes(store.load_params(version))
    index = store.item_index(["a", "b", "c"])
    assert index == [2, 1, 3] and meta["source"] == "bootstrap:toy"
    trained = np.asarray(model.trainer.params.item_emb)
    np.testing.assert_allclose(np.asarray(params.item_emb)[index], trained[[0, 1, 2]])


@pytest.mark.parametrize("negatives", [0, 8])
def test_an_example_is_trained_against_the_counts_without_itself(negatives):
    """The trainer counts an example before it steps on it (and replays it later): the loss must score
    it as the ranked event was scored, from the counts without its own transitions and popularity
    (``TrainBatch.own_*``), and its feature terms pass gradients only when its target was counted before."""
    import jax

    cfg = EngineConfig(dim=8, history=5, scenes=("default",), k=3, initial_capacity=256)
    other = toy_examples(cfg, n=300, n_items=100, seed=5)
    # every item a target already (scene bits as in the batch)
    other.target[:100] = np.arange(100)
    batch_ex = toy_examples(cfg, n=16, n_items=100, seed=6)
    batch_ex.target[:] = batch_ex.hist_item[:, -1]   # targets the others also name as successors
    # a source twice in the window
    batch_ex.target[2] = batch_ex.hist_item[2, -2] = batch_ex.hist_item[2, -3]
    batch_ex.target[0] = 150                          # an item never counted before
    params = init_params(cfg)._replace(nbr_scale=jnp.asarray(2.0),
                                       pop_gain=jnp.full((POPULARITY_PRIORS,), 0.5))
    weights, key, n_items = learned(params), jax.random.PRNGKey(0), jnp.int32(160)
    drawn = None if negatives == 0 else jax.random.randint(key, (negatives,), 0, 160)

    def counted(example=None):
        counts = TransitionCounts(half_lives=(1e12, 1e12))   # no decay: the counts differ by the example only
        counts.observe(other.hist_item, other.target, other.scene)
        if example is not None:
            counts.observe(batch_ex.hist_item[example:example + 1], batch_ex.target[example:example + 1],
                           batch_ex.scene[example:example + 1])
        return counts

    def loss(counts, example, own=False):
        observed_at = np.where(np.arange(16) == example, 300, -1) if own else np.full(16, -1)
        batch = to_batch(batch_ex, 16, *counts.own(observed_at, 3))._replace(
            mask=jnp.asarray(np.eye(16, dtype=np.float32)[example]))
        return float(_loss(weights, counts.arrays(256), batch, n_items, key, 0.0, drawn))

    for example in (1, 2, 3, 4):
        with_it = counted(example)
        assert loss(with_it, example) < loss(counted(), example) - 0.05, example  # seeing itself looks easy
        np.testing.assert_allclose(loss(with_it, example, own=True), loss(counted(), example), rtol=1e-4)
    with_it = counted(0)
    batch = to_batch(batch_ex, 16, *with_it.own(np.where(np.arange(16) == 0, 300, -1), 3))._replace(
        mask=jnp.asarray(np.eye(16, dtype=np.float32)[0]))
    grads = jax.grad(_loss)(weights, with_it.arrays(256), batch, n_items, key, 0.0, drawn)
    assert float(jnp.abs(grads.nbr_scale)) == 0.0 and float(jnp.abs(grads.pop_gain).sum()) == 0.0
    assert float(jnp.abs(grads.item_emb).sum()) > 0.0
