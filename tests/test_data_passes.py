"""Training data come in whole passes, whatever the epoch length, and resume mid-pass (issue 9,
item 1): pass p covers every training example exactly once in an order seeded by (seed, p);
reporting epochs cut the stream anywhere; a resumed run continues at the same example."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from conftest import SimulatedKill, kill_after_epoch  # noqa: E402
import tensorflow as tf  # noqa: E402

from tinyimagenet_tfrecords import features  # noqa: E402
from tinyimagenet_tfrecords import manifest as manifest_lib  # noqa: E402
from tinyimagenet_tfrecords import pipeline  # noqa: E402


def record_ids(ds, n):
    """The file names of the first ``n`` records of ``ds``, in order (parsed in batches)."""
    spec = {features.FILENAME: tf.io.FixedLenFeature([], tf.string)}
    names = ds.take(n).batch(1024).map(
        lambda r: tf.io.parse_example(r, spec)[features.FILENAME])
    return [name.decode() for batch in names.as_numpy_iterator() for name in batch]


def stream(build, start, *, seed=7, pipelines=1, pid=0):
    train = manifest_lib.open_build(build).split("train")
    part = train.part_size(pipelines, pid)
    return part, pipeline.training_records(
        train.paths, seed=seed, start_example=start, part=part, deterministic=True,
        num_input_pipelines=pipelines, input_pipeline_id=pid, shuffle_buffer=10_000)


def test_each_pass_covers_every_example_once_in_a_new_order(synthetic_build):
    n, ds = stream(synthetic_build, 0)
    assert n == 1000
    ids = record_ids(ds, 3 * n)
    passes = [ids[i * n:(i + 1) * n] for i in range(3)]
    for p in passes:
        assert len(set(p)) == n
    assert set(passes[0]) == set(passes[1]) == set(passes[2])
    assert passes[0] != passes[1] != passes[2]


def test_stream_started_at_example_k_is_the_tail_of_the_full_stream(synthetic_build):
    n, full = stream(synthetic_build, 0)
    ids = record_ids(full, 2 * n + 50)
    for k in (1, 337, n, n + 999, 2 * n):
        _, ds = stream(synthetic_build, k)
        assert record_ids(ds, 50) == ids[k:k + 50], k


def test_input_pipelines_together_cover_each_pass_once(synthetic_build):
    """2 shards, 3 pipelines: each takes every 3rd record of the pass's (shared) order."""
    per_pass = [[], []]
    for pid in range(3):
        n, ds = stream(synthetic_build, 0, pipelines=3, pid=pid)
        ids = record_ids(ds, 2 * n)
        for p in range(2):
            per_pass[p].append(set(ids[p * n:(p + 1) * n]))
            assert len(per_pass[p][-1]) == n
    for sets in per_pass:
        assert sum(map(len, sets)) == 1000 and len(set.union(*sets)) == 1000


def test_training_stream_start_example_continues_the_batches(synthetic_build):
    build = manifest_lib.open_build(synthetic_build)
    kw = dict(batch_size=10, image_size=16, seed=3)
    full = [y.numpy().tolist() for _, y in pipeline.training_stream(build, **kw).take(104)]
    later = [y.numpy().tolist() for _, y in pipeline.training_stream(
        build, start_example=990, **kw).take(5)]
    assert later == full[99:104]


# --- the fit loop consumes the stream --------------------------------------------------------

@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def unique_label_build(tmp_path_factory):
    """40 classes x 1 training image: the label is the example's id."""
    from training.data import make_synthetic_build
    out = str(tmp_path_factory.mktemp("ids") / "build")
    make_synthetic_build(out, num_classes=40, train_per_class=1, val_per_class=1, seed=0)
    return out


def _spy_on_streams(monkeypatch):
    """Records, per training stream the loop builds, its start and the labels it delivers."""
    from tinyimagenet_tfrecords import pipeline
    streams = []
    real = pipeline.training_stream

    def spy(build, **kwargs):
        ds = real(build, **kwargs)
        seen = []
        streams.append((kwargs.get("start_example"), kwargs["batch_size"], seen))

        def tap(y):
            seen.extend(y.numpy().tolist())
            return y

        def record(x, y):
            out = tf.py_function(tap, [y], tf.int32)
            out.set_shape(y.shape)
            return x, out
        return ds.map(record)
    monkeypatch.setattr(pipeline, "training_stream", spy)
    return streams


def _consumed(streams, total):
    """The labels the steps consumed: each stream up to where the next one starts (prefetching
    reads ahead, and the loop rebuilds a stream only at a phase start or a resume)."""
    out = []
    for i, (start, _, seen) in enumerate(streams):
        end = streams[i + 1][0] if i + 1 < len(streams) else total
        out += seen[:end - (start or 0)]
    return out



def _cfg(build, out, **kw):
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=3, image_size=16, batch_size=8, augment="none",
                               plateau=False),
              config_lib.Phase(epochs=2, image_size=16, batch_size=4, augment="none",
                               plateau=False))
    return config_lib.RunConfig(
        data=build, out=str(out), model="smoke", phases=phases,
        steps_per_epoch=3, val_image_size=16, eval_batch_size=40, xla=False,
        progress=False, misclassified=0, export=False, seed=5, **kw)


@pytest.mark.slow
def test_short_epochs_walk_through_whole_passes_and_resume_at_the_same_example(
        unique_label_build, tmp_path, monkeypatch):
    import training
    # 3 epochs x 3 steps x 8 + 2 x 3 x 4 = 96 examples = 2.4 passes of 40; epochs end mid-pass.
    total = 96
    ref_streams = _spy_on_streams(monkeypatch)
    training.run(_cfg(unique_label_build, tmp_path / "ref"))
    ref = _consumed(ref_streams, total)
    assert len(ref) == total
    assert sorted(ref[:40]) == list(range(40)) and sorted(ref[40:80]) == list(range(40))
    assert len(set(ref[80:])) == 16 and ref[:40] != ref[40:80]
    # Killed after epoch 2 (mid-pass, inside phase 1), then resumed.
    cut_streams = _spy_on_streams(monkeypatch)
    with pytest.raises(SimulatedKill):
        training.run(_cfg(unique_label_build, tmp_path / "cut"), hooks=kill_after_epoch(2))
    assert len(cut_streams) == 1
    summary = training.run(_cfg(unique_label_build, tmp_path / "cut"))
    assert cut_streams[1][0] == 48  # the resumed stream starts where epoch 2 ended
    assert _consumed(cut_streams, total) == ref
    assert summary["epochs"] == 5
