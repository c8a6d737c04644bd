"""TensorBoard logs, read back with TensorBoard's own reader."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_curves_widths_histograms_and_operation_markers_are_logged(make_exp, tmp_path):
    exp = make_exp("tb", tensorboard_dir=str(tmp_path / "tb"))  # fresh: no curves of earlier runs
    exp.train_n_steps(3)
    exp.eval_full()
    exp.model.add_neurons(layer_index=0, neuron_count=2)
    exp.train_loader.dataset.denylist_samples({7})
    exp.dump()
    exp.load(checkpoint_id=0)
    exp.close()
    acc = EventAccumulator(str(exp.tensorboard_dir), size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "neurons/layer_0"):
        assert tag in tags["scalars"], tag
    train_loss = acc.Scalars("train/loss")
    assert train_loss[0].step == exp.model_age == 3 * 64
    widths = acc.Scalars("neurons/layer_0")
    assert [round(s.value) for s in widths][-1] == 4
    # add, deny, dump and load all happen at the same model age: one point per width and step
    assert len({(s.step, s.value) for s in widths}) == len(widths) == 2
    assert any(t.startswith("trigger_rate/layer_0/") for t in tags["histograms"])
    markers = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("operations/text_summary")]
    text = "\n".join(markers)
    for expected in ("add 2 neurons to layer 0", "deny 1 train samples", "dump checkpoint 0", "load checkpoint 0"):
        assert expected in text, expected
