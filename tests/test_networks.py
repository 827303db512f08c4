import math

import pytest
import torch

from ep_core.numerics.activations import draw_alphas
from ep_core.numerics.networks import build_network, hopfield_resnet
from ep_core.numerics.orders import greedy_coloring, is_proper, update_groups


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_vgg5_matches_the_authors_network():
    net = build_network("vgg5")
    assert n_params(net) == 3_859_210
    assert len(list(net.parameters())) == 10
    assert [layer.shape for layer in net.layers] == [
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
        (10,),
    ]
    assert sum(math.prod(layer.shape) for layer in net.layers) == 59_402
    names = [n for n, _ in net.named_parameters()]
    assert all(n.startswith("biases.") for n in names[:5]) and all(n.startswith("edges.") for n in names[5:])


def test_hopfield_resnet13_matches_the_authors_network():
    net = build_network("hopfield_resnet13")
    assert n_params(net) == 9_742_858
    assert sum(b.numel() for b in net.biases.values()) == 2_826
    assert len(list(net.parameters())) == 22 and net.num_layers == 9
    assert sum(math.prod(layer.shape) for layer in net.layers) == 296_970
    # Edge order, kernels and strides of the authors' W0..W12 (skips: 3rd edge in block 1, 2nd later).
    expected = [
        (0, 1, 3, 1), (1, 2, 3, 2), (0, 2, 1, 2), (2, 3, 3, 1), (2, 4, 1, 2), (3, 4, 3, 2), (4, 5, 3, 1),
        (4, 6, 1, 2), (5, 6, 3, 2), (6, 7, 3, 1), (6, 8, 1, 2), (7, 8, 3, 2),
    ]  # fmt: skip
    edges = list(net.edges.values())
    assert [(e.pre, e.post, e.kernel, e.stride) for e in edges[:12]] == expected
    assert tuple(edges[12].weight.shape) == (10, 2048)
    gains = [spec.gain for spec in net.edge_specs]
    assert gains == [0.6, 0.6, 0.7, 0.6, 0.7, 0.6, 0.6, 0.7, 0.6, 0.6, 0.7, 0.6, 0.8]


def test_initial_weights_fill_the_authors_uniform_range():
    net = build_network("hopfield_resnet13")
    w0 = net.edges["x_to_h1a"].weight  # half-width 0.6/sqrt(27) = 0.1155
    assert 0.11 < w0.abs().max().item() <= 0.6 / math.sqrt(27)
    b_out = net.biases["out"]  # half-width 0.5/sqrt(512*9) = 0.007366
    assert b_out.abs().max().item() <= 0.5 / math.sqrt(512 * 9)


def test_plain13_has_exactly_the_skip_weights_fewer():
    resnet, plain = build_network("hopfield_resnet13"), build_network("hopfield_plain13")
    skips = sum(resnet.edges[s.name].weight.numel() for s in resnet.edge_specs if s.skip)
    assert skips == 426_368
    assert n_params(resnet) - n_params(plain) == skips
    assert not any(s.skip for s in plain.edge_specs)


def test_four_block_resnet_is_hopfield_resnet13_and_deeper_ones_build():
    a, b = hopfield_resnet(blocks=4, width=1 / 16), build_network("hopfield_resnet13", width=1 / 16)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    deep = hopfield_resnet(blocks=6, width=1 / 16)
    assert deep.num_layers == 13 and len(deep.edges) == 19
    assert deep.layers[-2].shape == (32, 2, 2)


def test_width_input_size_and_channels():
    net = build_network("vgg5", width=1 / 16, in_channels=1, num_classes=100, input_size=16)
    assert [layer.shape for layer in net.layers] == [(8, 8, 8), (16, 4, 4), (32, 2, 2), (32, 1, 1), (100,)]


def test_update_orders():
    hr13 = build_network("hopfield_resnet13", width=1 / 16)
    assert update_groups(hr13, "even_odd") == [[1, 3, 5, 7, 9], [2, 4, 6, 8]]
    assert not is_proper(update_groups(hr13, "even_odd"), hr13.free_edges())
    assert update_groups(hr13, "coloring") == [[1, 3, 5, 7, 9], [2, 6], [4, 8]]
    assert is_proper(update_groups(hr13, "coloring"), hr13.free_edges())
    vgg = build_network("vgg5", width=1 / 16)
    assert update_groups(vgg, "coloring") == update_groups(vgg, "even_odd") == [[1, 3, 5], [2, 4]]
    assert update_groups(vgg, "synchronous") == [[1, 2, 3, 4, 5]]
    assert greedy_coloring([1, 2, 3], [(1, 2), (2, 3), (1, 3)]) == [[1], [2], [3]]


def test_random_alphas_are_seeded_saved_and_reported():
    a = build_network("hopfield_resnet13", width=1 / 16, activation="relu_random", alpha_seed=7)
    b = build_network("hopfield_resnet13", width=1 / 16, activation="relu_random", alpha_seed=7)
    c = build_network("hopfield_resnet13", width=1 / 16, activation="relu_random", alpha_seed=8)
    assert a.alphas.shape == (8,)
    assert torch.equal(a.alphas, b.alphas) and not torch.equal(a.alphas, c.alphas)
    assert ((a.alphas >= 1) & (a.alphas <= 10)).all()
    assert "alphas" in a.state_dict()
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.alphas, a.alphas)
    assert f"{a.alphas[0].item():.3g}" in repr(a)
    wide = draw_alphas("relu_random", 1000, seed=0, alpha_range=(0.0, 10.0))
    assert wide.min() < 0.1 and wide.max() > 9.9


def test_fixed_activations():
    assert torch.equal(build_network("vgg5", width=1 / 16).alphas, torch.full((4,), 6.0, dtype=torch.float64))
    relu1 = build_network("vgg5", width=1 / 16, activation="relu1")
    assert torch.equal(relu1.alphas, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50"}, "unknown network 'resnet50'; valid choices: vgg5, hopfield_resnet13"),
        ({"name": "vgg5", "activation": "tanh"}, "unknown activation 'tanh'; valid choices: relu6, relu1"),
        ({"name": "vgg5", "input_size": 28}, "input_size must be a multiple of 16"),
        ({"name": "vgg5", "width": 0}, "width must be a positive number"),
        ({"name": "hopfield_resnet13", "gains": [0.5] * 12}, "has 13 edges, got 12 gains"),
        ({"name": "hopfield_resnet", "blocks": 0}, "blocks must be a positive integer"),
        ({"name": "vgg5", "activation": "relu_random", "alpha_range": (5, 1)}, "alpha_range"),
    ],
)
def test_bad_network_arguments_are_value_errors(kwargs, message):
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_network(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 1, 32, 32), r"expects input of shape \(B, 3, 32, 32\), got \(2, 1, 32, 32\)"),
        (torch.zeros(2, 3, 16, 16), r"expects input of shape \(B, 3, 32, 32\)"),
        (torch.full((2, 3, 32, 32), float("nan")), "input contains NaN or infinite values"),
    ],
)
def test_bad_inputs_are_value_errors(x, message):
    net = build_network("vgg5", width=1 / 16)
    with pytest.raises(ValueError, match=message):
        net.check_input(x)
