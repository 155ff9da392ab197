"""training.engine.ema.WeightAverage: torch's EMA over a model's parameters and buffers, swapped in and out."""
import pytest
import torch

from training.engine.ema import WeightAverage


def tensors_of(model):
    return {**dict(model.named_parameters()), **{f"buffer.{k}": v for k, v in model.named_buffers()}}


def test_average_follows_the_ema_formula_and_copies_counts():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(tensors_of(model), decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
        model[1].num_batches_tracked.fill_(7)
    average.update()
    expected = 0.75 * start + 0.25 * (start + 4.0)
    torch.testing.assert_close(average.average["0.weight"], expected)
    assert average.average["buffer.1.num_batches_tracked"].item() == 7  # copied, not averaged
    assert average.average["buffer.1.num_batches_tracked"].dtype == torch.long


def test_swapped_in_holds_the_average_inside_and_the_live_weights_after():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(tensors_of(model), decay=0.5)
    live = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.mul_(3.0)
    average.update()
    after_step = model.weight.detach().clone()
    with average.swapped_in():
        torch.testing.assert_close(model.weight.detach(), 0.5 * live + 0.5 * after_step)
    assert torch.equal(model.weight.detach(), after_step)
    with pytest.raises(RuntimeError):  # an error inside the block still puts the live weights back
        with average.swapped_in():
            raise RuntimeError("validation failed")
    assert torch.equal(model.weight.detach(), after_step)


def test_state_round_trips_and_a_missing_average_is_named():
    model = torch.nn.Linear(3, 2)
    first = WeightAverage(tensors_of(model), decay=0.5)
    with torch.no_grad():
        model.bias.add_(1.0)
    first.update()
    second = WeightAverage(tensors_of(model), decay=0.5)
    second.load_state(first.state())
    assert all(torch.equal(first.average[k], second.average[k]) for k in first.average)
    with pytest.raises(KeyError, match="bias"):
        second.load_state({"ema.weight": model.weight.detach()})
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(tensors_of(model), decay=1.0)
