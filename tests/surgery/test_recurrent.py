"""The layer feeding an LSTM / GRU: its neurons are the recurrent layer's inputs, whose weight columns and
``input_size`` follow a prune or an add (an add changes nothing), with the optimizer's state."""

from __future__ import annotations

import pytest
import torch
from surgery_helpers import assert_same, fingerprint, train_step
from torch import nn

from weightslab.errors import SurgeryError
from weightslab.surgery import convert_to_ops


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU], bidirectional: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.rnn = kind(8, 5, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(10 if bidirectional else 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(torch.relu(self.embed(x)))
        return self.head(out[:, -1])


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_layer_feeding_a_recurrent_layer_is_pruned_and_extended_with_its_input_columns(kind, bidirectional):
    torch.manual_seed(0)
    net = convert_to_ops(Recurrent(kind, bidirectional))
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    rnn = net.model.rnn
    inputs = [rnn.weight_ih_l0] + ([rnn.weight_ih_l0_reverse] if bidirectional else [])
    old = [(w.detach().clone(), optimizer.state[w]["exp_avg"].clone()) for w in inputs]
    before = net(x).detach()

    net.add_neurons(0, 3, seed=0)
    assert rnn.input_size == 11 and torch.equal(net(x).detach(), before)  # new columns are zero: exact
    net.prune(0, [1, 4, 9])
    keep = [0, 2, 3, 5, 6, 7]
    assert rnn.input_size == 8 and net.model.embed.out_features == 8
    for weight, (old_weight, old_avg) in zip(inputs, old):
        assert weight.shape == (rnn.weight_hh_l0.shape[1] * (4 if kind is nn.LSTM else 3), 8)
        assert torch.equal(weight[:, :6], old_weight[:, keep])
        assert torch.equal(weight[:, 6:], torch.zeros_like(weight[:, 6:]))  # the two surviving added columns
        assert torch.equal(optimizer.state[weight]["exp_avg"][:, :6], old_avg[:, keep])
    assert rnn.weight_ih_l1.shape[1] == (10 if bidirectional else 5)  # the second layer reads hidden units
    train_step(net, optimizer, x, y)
    assert net(x).shape == (4, 3)


class HiddenUnits(nn.Module):
    """A recurrent layer whose output sequence and final hidden state are both read."""

    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU] | type[nn.RNN]) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.rnn = kind(8, 5, batch_first=True)
        self.head = nn.Linear(5, 3)
        self.from_state = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(torch.relu(self.embed(x)))
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out[:, -1]) + self.from_state(h_n[-1])


@pytest.mark.parametrize(("kind", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_hidden_units_are_pruned_from_every_gate_the_recurrent_weight_and_the_readers_with_adam_state(kind, gates):
    torch.manual_seed(0)
    net = convert_to_ops(HiddenUnits(kind))
    assert type(net.layers[1]).__name__ == f"{kind.__name__}WithNeuronOps"
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    rnn = net.model.rnn
    old = {n: (p.detach().clone(), optimizer.state[p]["exp_avg"].clone()) for n, p in net.named_parameters()}
    net.prune(1, [1, 3])
    keep = [0, 2, 4]
    rows = [b * 5 + h for b in range(gates) for h in keep]  # unit h is row h of every gate block
    expected = {
        "model.rnn.weight_ih_l0": lambda t: t[rows],
        "model.rnn.weight_hh_l0": lambda t: t[rows][:, keep],
        "model.rnn.bias_ih_l0": lambda t: t[rows],
        "model.rnn.bias_hh_l0": lambda t: t[rows],
        "model.head.weight": lambda t: t[:, keep],
        "model.from_state.weight": lambda t: t[:, keep],  # reads h_n
    }
    for name, select in expected.items():
        param = net.get_parameter(name)
        assert torch.equal(param, select(old[name][0])), name
        assert torch.equal(optimizer.state[param]["exp_avg"], select(old[name][1])), name
    assert rnn.hidden_size == 3 and rnn.weight_hh_l0.shape == (3 * gates, 3)
    train_step(net, optimizer, x, y)
    assert net(x).shape == (4, 3)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_added_hidden_units_leave_the_output_unchanged_and_train(kind):
    torch.manual_seed(0)
    net = convert_to_ops(HiddenUnits(kind))
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.attach_optimizer(optimizer)
    train_step(net, optimizer, x, y)
    before = net(x).detach()
    net.add_neurons(1, 3, seed=0)
    rnn = net.model.rnn
    after = net(x).detach()
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6  # float summation order only
    assert torch.equal(rnn.weight_hh_l0[:, 5:], torch.zeros_like(rnn.weight_hh_l0[:, 5:]))  # nobody reads them yet
    assert torch.equal(net.model.head.weight[:, 5:], torch.zeros(3, 3))
    assert bool((rnn.weight_ih_l0[5:8] != 0).all())  # drawn like PyTorch's initializer
    train_step(net, optimizer, x, y)
    assert bool((net.model.head.weight[:, 5:] != 0).any())  # and they learn


class EncoderDecoder(nn.Module):
    """The decoder starts from the encoder's final state: unit h of one is unit h of the other."""

    def __init__(self, fixed_start: bool = False) -> None:
        super().__init__()
        self.fixed_start = fixed_start
        self.encoder = nn.LSTM(4, 6, batch_first=True)
        self.decoder = nn.LSTM(3, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(x)
        if self.fixed_start:  # a start state of a size the code fixes
            state = (torch.zeros(1, x.shape[0], 6), torch.zeros(1, x.shape[0], 6))
        out, _ = self.decoder(x[..., :3], state)
        return self.head(out[:, -1])


def test_a_decoder_started_from_an_encoders_state_is_edited_with_it_and_a_fixed_start_state_is_refused():
    torch.manual_seed(0)
    net = convert_to_ops(EncoderDecoder())
    x = torch.randn(2, 5, 4)
    before = net(x).detach()
    net.add_neurons(0, 2, seed=0)  # the encoder: the decoder gains the same units
    assert net.model.encoder.hidden_size == net.model.decoder.hidden_size == 8
    assert float((net(x).detach() - before).abs().max() / before.abs().max()) < 1e-6
    net.prune(1, [0, 7])  # the decoder: the encoder loses the same units
    assert net.model.encoder.hidden_size == net.model.decoder.hidden_size == 6 and net(x).shape == (2, 2)

    fixed = convert_to_ops(EncoderDecoder(fixed_start=True))
    fixed(x)
    snapshot = fingerprint(fixed)
    with pytest.raises(SurgeryError, match="the initial state given to model.decoder does not come from an ops layer"):
        fixed.prune(1, [0])
    assert_same(snapshot, fingerprint(fixed))
    fixed.prune(0, [0])  # the encoder, whose final state nothing reads now
    assert fixed.model.encoder.hidden_size == 5 and fixed(x).shape == (2, 2)
