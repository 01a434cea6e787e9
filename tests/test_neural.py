"""The hand-written network of chapter 1 against torch: autograd, torch.nn and gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F

from slmbook import neural
from slmbook.neural import MLP, Neuron
from slmbook.optimizers import SGD, Adam


@pytest.mark.parametrize("name", sorted(neural.ACTIVATIONS))
def test_activation_matches_torch_module_and_its_autograd_derivative(name):
    z = torch.linspace(-6, 6, 241, dtype=torch.float64)
    z = z[z != 0]  # relu-type derivatives are undefined at exactly 0
    act = neural.activation(name)
    reference = neural.TORCH_ACTIVATIONS[name]()
    zz = z.clone().requires_grad_(True)
    out = reference(zz)
    (grad,) = torch.autograd.grad(out.sum(), zz)
    torch.testing.assert_close(act(z), out.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(act.grad(z), grad, rtol=1e-12, atol=1e-12)


def test_activation_derivative_facts():
    # sigmoid' peaks at 1/4 at 0; tanh' at 1; relu' is 0 for negatives and 1 for positives
    assert neural.activation("sigmoid").grad(torch.zeros(1)).item() == pytest.approx(0.25)
    assert neural.activation("tanh").grad(torch.zeros(1)).item() == pytest.approx(1.0)
    assert neural.activation("relu").grad(torch.tensor([-2.0, 3.0])).tolist() == [0.0, 1.0]


def test_unknown_activation_and_loss_are_rejected():
    with pytest.raises(ValueError, match="activation='swish2'"):
        neural.activation("swish2")
    with pytest.raises(ValueError, match="loss='hinge'"):
        neural.loss_fn("hinge")


def test_losses_and_their_gradients_match_torch():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(8, 3, generator=g, dtype=torch.float64)
    ref = F.mse_loss(pred, target)
    (ref_grad,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(neural.mse_loss(pred.detach(), target), ref.detach())
    torch.testing.assert_close(neural.mse_loss_grad(pred.detach(), target), ref_grad)

    logits = (10 * torch.randn(8, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    classes = torch.randint(0, 5, (8,), generator=g)
    ref = F.cross_entropy(logits, classes)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(neural.cross_entropy(logits.detach(), classes), ref.detach())
    torch.testing.assert_close(neural.cross_entropy_grad(logits.detach(), classes), ref_grad)
    torch.testing.assert_close(neural.softmax(logits.detach()), torch.softmax(logits.detach(), -1))


def test_log_softmax_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0]])
    out = neural.log_softmax(logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.log_softmax(logits, -1))


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="target shape"):
        neural.mse_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="targets must lie"):
        neural.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer class indices"):
        neural.cross_entropy(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))


def test_neuron_backward_matches_autograd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, generator=g, dtype=torch.float64)
    neuron = Neuron(w, 0.3, "sigmoid")
    y = neuron(x)
    grad_y = torch.randn(5, generator=g, dtype=torch.float64)
    grad_x = neuron.backward(grad_y)

    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    yr = torch.sigmoid(xr @ wr + br)
    torch.testing.assert_close(y, yr.detach())
    gx, gw, gb = torch.autograd.grad(yr, (xr, wr, br), grad_y)
    torch.testing.assert_close(grad_x, gx)
    torch.testing.assert_close(neuron.grad_weight, gw)
    torch.testing.assert_close(neuron.grad_bias, gb)


@pytest.mark.parametrize("act,norm,loss", [("tanh", False, "mse"), ("relu", True, "cross_entropy"),
                                           ("gelu", True, "mse"), ("sigmoid", False, "cross_entropy")])
def test_mlp_forward_and_gradients_match_torch_nn(act, norm, loss):
    g = torch.Generator().manual_seed(2)
    mlp = MLP([4, 7, 6, 3], act=act, init="kaiming", norm=norm, seed=3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    target = torch.randn(10, 3, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 3, (10,), generator=g)
    torch.testing.assert_close(mlp(x), mlp.to_torch()(x).detach())
    value, grads = neural.loss_and_gradients(mlp, x, target, loss)
    ref_value, ref_grads = neural.gradients_by_autograd(mlp, x, target, loss)
    torch.testing.assert_close(value, ref_value)
    assert len(grads) == len(ref_grads) == 6
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", [False, True])
def test_hand_written_backward_passes_gradcheck(norm):
    mlp = MLP([3, 5, 2], act="tanh", norm=norm, seed=0)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    params = [p.clone().requires_grad_(True) for p in mlp.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: neural.HandWrittenBackward.apply(mlp, x, *ps), (x, *params))


def test_gradcheck_catches_a_wrong_backward():
    """The check must be able to fail: break tanh's derivative and gradcheck must notice."""
    broken = neural.Activation("tanh", torch.tanh, lambda z: 1 - torch.tanh(z))  # forgot the square
    mlp = MLP([3, 5, 2], act="tanh", seed=0)
    for layer in mlp.layers:
        if isinstance(layer, neural.Act):
            layer.act = broken
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    params = [p.clone().requires_grad_(True) for p in mlp.parameters()]
    assert not torch.autograd.gradcheck(lambda x, *ps: neural.HandWrittenBackward.apply(mlp, x, *ps),
                                        (x, *params), raise_exception=False)


@pytest.mark.parametrize("scheme,torch_init", [
    ("xavier", lambda w, g: torch.nn.init.xavier_normal_(w, generator=g)),
    ("kaiming", lambda w, g: torch.nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)),
])
def test_init_matches_torch_nn_init(scheme, torch_init):
    mine = neural.init_weight(30, 20, scheme, generator=torch.Generator().manual_seed(7))
    ref = torch_init(torch.empty(20, 30, dtype=torch.float64), torch.Generator().manual_seed(7))
    torch.testing.assert_close(mine, ref)


def test_pytorch_init_bound_and_normal_std():
    w = neural.init_weight(100, 50, "pytorch", generator=torch.Generator().manual_seed(0))
    assert w.abs().max() <= 1 / math.sqrt(100)
    w = neural.init_weight(400, 400, "normal", std=0.5, generator=torch.Generator().manual_seed(0))
    assert w.std().item() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("kwargs,match", [
    (dict(fan_in=0, fan_out=3), "fan_in=0"),
    (dict(fan_in=3, fan_out=3, scheme="he"), "scheme='he'"),
    (dict(fan_in=3, fan_out=3, scheme="normal"), "std=None"),
    (dict(fan_in=3, fan_out=3, scheme="xavier", std=1.0), "std=1.0"),
])
def test_init_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neural.init_weight(**kwargs)


def test_mlp_rejects_bad_input():
    with pytest.raises(ValueError, match="sizes"):
        MLP([3])
    with pytest.raises(ValueError, match="x must be"):
        MLP([3, 2])(torch.zeros(4, 5, dtype=torch.float64))


def _deep_grad_norms(**kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g, dtype=torch.float64)
    y = torch.randn(64, 1, generator=g, dtype=torch.float64)
    mlp = MLP([32] + [32] * 12 + [1], seed=1, **kwargs)
    neural.loss_and_gradients(mlp, x, y)
    return neural.weight_gradient_norms(mlp)


def test_sigmoid_gradients_vanish_with_depth_but_relu_with_kaiming_init_does_not():
    sigmoid = _deep_grad_norms(act="sigmoid", init="pytorch")
    assert sigmoid[0] < 1e-6 * sigmoid[-1]  # each sigmoid multiplies the gradient by <= 1/4
    relu = _deep_grad_norms(act="relu", init="kaiming")
    assert 0.05 < relu[0] / relu[-1] < 20


def test_bad_init_scales_vanish_or_explode_and_layer_norm_rescues_both():
    assert max(_deep_grad_norms(act="relu", init="normal", std=0.02)) < 1e-8  # signal dies
    assert min(_deep_grad_norms(act="relu", init="normal", std=0.6)) > 1e8  # signal explodes
    for std in (0.02, 0.6):
        norms = _deep_grad_norms(act="relu", init="normal", std=std, norm=True)
        assert 1e-2 < min(norms) and max(norms) < 1e3
    kaiming = _deep_grad_norms(act="relu", init="kaiming")
    assert 1e-2 < min(kaiming) and max(kaiming) < 1e3


def test_activation_stds_shrink_with_small_init():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stds = neural.activation_stds(MLP([32] * 8 + [1], act="tanh", init="normal", std=0.05), x)
    assert len(stds) == 7 and stds[-1] < 1e-3 * stds[0]


def test_train_lowers_the_loss_with_sgd_and_adam():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 2, generator=g, dtype=torch.float64)
    y = (x[:, :1] * x[:, 1:]).sin()
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.01)):
        mlp = MLP([2, 16, 16, 1], act="tanh", seed=0)
        history = neural.train(mlp, x, y, make(mlp.parameters()), steps=200, x_val=x[:16], target_val=y[:16])
        assert history["loss"][-1] < 0.2 * history["loss"][0]
        assert len(history["val_loss"]) == 200 and len(history["grad_norms"][0]) == 3
    with pytest.raises(ValueError, match="steps=0"):
        neural.train(mlp, x, y, SGD(mlp.parameters(), lr=0.1), steps=0)


def test_minibatches_cover_each_example_once_per_epoch_and_drop_the_remainder():
    batches = neural.minibatches(10, 3, torch.Generator().manual_seed(0))
    for _ in range(2):  # two epochs of 10 // 3 = 3 batches each
        epoch = torch.cat([next(batches) for _ in range(3)])
        assert len(epoch) == 9 and len(set(epoch.tolist())) == 9 and epoch.max() < 10
    with pytest.raises(ValueError, match="batch_size=11"):
        next(neural.minibatches(10, 11))
    with pytest.raises(ValueError, match="batch_size=0"):
        next(neural.minibatches(10, 0))


def _xor(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2
    return x, (x[:, 0] * x[:, 1] > 0).long()


def test_minibatch_training_with_a_schedule_equals_torch_optim_and_lambda_lr():
    x, y = _xor()
    mlp = MLP([2, 6, 2], act="tanh", seed=1)
    reference = mlp.to_torch()
    schedule = lambda step: 0.5 * (step + 1) / 5 if step < 5 else 0.5 * 0.9 ** (step - 5)  # noqa: E731
    history = neural.train(mlp, x, y, SGD(mlp.parameters(), lr=1.0, momentum=0.9), steps=30,
                           loss="cross_entropy", batch_size=16, lr_schedule=schedule, seed=3)
    optimizer = torch.optim.SGD(reference.parameters(), lr=1.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = neural.minibatches(len(x), 16, torch.Generator().manual_seed(3))
    for step in range(30):
        idx = next(batches)
        with torch.no_grad():
            assert math.isclose(history["full_loss"][step], F.cross_entropy(reference(x), y).item(), rel_tol=1e-12)
        loss = F.cross_entropy(reference(x[idx]), y[idx])
        assert math.isclose(history["loss"][step], loss.item(), rel_tol=1e-12)
        assert math.isclose(history["lr"][step], optimizer.param_groups[0]["lr"], rel_tol=1e-12)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    for ours, theirs in zip(mlp.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(ours, theirs.detach(), rtol=0, atol=1e-12)


def test_full_batch_training_records_the_full_loss_as_the_loss():
    x, y = _xor()
    mlp = MLP([2, 4, 2], act="tanh", seed=0)
    history = neural.train(mlp, x, y, SGD(mlp.parameters(), lr=0.1), steps=3, loss="cross_entropy")
    assert history["loss"] == history["full_loss"] and history["lr"] == [0.1] * 3
    with pytest.raises(ValueError, match=r"lr_schedule\(0\) = -0.1"):
        neural.train(mlp, x, y, SGD(mlp.parameters(), lr=0.1), steps=3, loss="cross_entropy",
                     lr_schedule=lambda step: -0.1)


def test_minibatch_gradient_error_follows_the_sampling_law():
    x, y = _xor(n=12)
    mlp = MLP([2, 5, 2], act="tanh", seed=2)
    # per-example gradients by torch.autograd: the error of a batch of one, averaged over every example
    _, full = neural.gradients_by_autograd(mlp, x, y, "cross_entropy")
    full = torch.cat([g.flatten() for g in full])
    singles = [torch.cat([g.flatten() for g in neural.gradients_by_autograd(mlp, x[i:i + 1], y[i:i + 1],
                                                                           "cross_entropy")[1]]) for i in range(12)]
    at_one = sum(float((s - full).pow(2).sum()) for s in singles) / 12 / float(full.pow(2).sum())
    for batch_size in (1, 4):  # 400 random batches: the estimate is within a few percent of the law
        expected = at_one * (12 - batch_size) / (batch_size * (12 - 1))
        measured = neural.minibatch_gradient_error(mlp, x, y, batch_size, samples=400, loss="cross_entropy")
        assert measured == pytest.approx(expected, rel=0.15)
    assert neural.minibatch_gradient_error(mlp, x, y, 12, samples=3, loss="cross_entropy") < 1e-25
    with pytest.raises(ValueError, match="batch_size=13"):
        neural.minibatch_gradient_error(mlp, x, y, 13)
