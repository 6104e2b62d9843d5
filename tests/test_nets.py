"""Score networks: official score_sde checkpoint interop, full-size architectures, presets, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdegen.nets import (NETWORKS, PRESETS, build_network, load_score_sde_checkpoint, model_options)
from sdegen.nets import resample
from sdegen.nets.layers import FIRConv2d

SHARED = Path(__file__).resolve().parent / "data" / "score_sde_format"  # interop vectors (README there)

VECTORS = {  # vector name -> the preset describing the same network
    "ncsnpp_ve_continuous": "ncsnpp_ve_continuous_small",
    "ddpmpp_vp_continuous": "ddpmpp_vp_continuous_small",
}
MANIFESTS = {  # full-size manifest -> preset
    "ncsnpp_ve_continuous": "cifar10_ncsnpp_continuous",
    "ddpmpp_vp_continuous": "cifar10_ddpmpp_continuous",
    "ncsnpp_deep_ve_continuous": "cifar10_ncsnpp_deep_continuous",
    "ddpmpp_deep_subvp_continuous": "cifar10_ddpmpp_deep_continuous",
}
CIFAR10 = {"image_size": 32, "num_channels": 3}




def _vector(name: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    config = json.loads((SHARED / f"{name}.config.json").read_text())
    return config, load_file(str(SHARED / f"{name}.io.safetensors"))


def _output(net: torch.nn.Module, io: dict) -> torch.Tensor:
    with torch.no_grad():
        return net(io["x"], io["labels"])


# --- official checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VECTORS))
def test_official_checkpoint_reproduces_outputs(name):
    config, io = _vector(name)
    path = SHARED / f"{name}.checkpoint.pth"
    ema = _output(load_score_sde_checkpoint(path, config), io)
    raw = _output(load_score_sde_checkpoint(path, config, use_ema=False), io)
    torch.testing.assert_close(ema, io["output_ema"], atol=1e-4, rtol=0)
    torch.testing.assert_close(raw, io["output_raw"], atol=1e-4, rtol=0)
    assert (ema - raw).abs().max() > 1e-2  # the EMA weights are used by default, not the raw ones


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_preset_equals_vector_config(name):
    config, io = _vector(name)
    net = load_score_sde_checkpoint(SHARED / f"{name}.checkpoint.pth", VECTORS[name])
    assert not net.training
    torch.testing.assert_close(_output(net, io), io["output_ema"], atol=1e-4, rtol=0)
    preset, official = PRESETS[VECTORS[name]], model_options(config)
    for key, value in config["config_model"].items():
        if key in preset:
            assert official[key] == (list(preset[key]) if isinstance(preset[key], tuple) else preset[key]), key
    for key in ("image_size", "num_channels", "centered", "conditioning", "parametrization"):
        assert official[key] == preset[key], key


def test_uncentered_models_map_inputs_to_minus_one_one():
    config, io = _vector("ncsnpp_ve_continuous")  # trained with data_centered = false
    assert config["data_centered"] is False
    net = load_score_sde_checkpoint(SHARED / "ncsnpp_ve_continuous.checkpoint.pth",
                                    {**config, "data_centered": True})
    assert (_output(net, io) - io["output_ema"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_architecture_matches_manifest(name):
    manifest = json.loads((SHARED / f"{name}.full_manifest.json").read_text())
    expected = [(k, list(shape)) for k, shape in manifest["state_dict_shapes"].items()]
    for config in ({**manifest, **CIFAR10}, MANIFESTS[name]):
        with torch.device("meta"):
            net = build_network(config)
        assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == expected
        assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]


# --- presets and architecture variants --------------------------------------------------------------

def _input(name: str, batch: int = 2) -> torch.Tensor:
    opts = PRESETS[name]
    if "dim" in opts:   # mlp, mlp_classifier
        return torch.randn(batch, opts["dim"])
    return torch.rand(batch, opts["num_channels"], opts["image_size"], opts["image_size"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_maps_shapes(name):
    opts = PRESETS[name]
    assert opts["name"] in NETWORKS
    assert opts["conditioning"] in ("sigma", "t999") and opts["parametrization"] in ("score", "eps", "logits")
    labels = torch.tensor([0.5, 20.0]) if opts["conditioning"] == "sigma" else torch.tensor([10.0, 900.0])
    if name.startswith("cifar10"):  # full size: propagate shapes only
        with torch.device("meta"):
            net, x = build_network(name), _input(name).to("meta")
            assert net(x, labels.to("meta")).shape == x.shape
        return
    torch.manual_seed(0)
    net, x = build_network(name), _input(name)
    y = net(x, labels)
    out_shape = (2, opts["num_classes"]) if opts["parametrization"] == "logits" else x.shape   # classifiers
    assert y.shape == out_shape and torch.isfinite(y).all()
    # Each sample is processed on its own: a batch of one gives the same answer.
    torch.testing.assert_close(net(x[:1], labels[:1]), y[:1], atol=1e-5, rtol=1e-5)


VARIANTS = [
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="sum"),
    dict(progressive="residual", progressive_input="residual"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat", fir=False),
    dict(resblock_type="ddpm", fir=True),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, progressive_input="none"),
    dict(resblock_type="ddpm", fir=True, progressive="residual", progressive_input="input_skip",
         progressive_combine="cat"),
    dict(embedding_type="positional", scale_by_sigma=True, skip_rescale=False),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
def test_ncsnpp_variants_use_every_layer(variant):
    torch.manual_seed(0)
    net = build_network({**PRESETS["ncsnpp_ve_continuous_small"], **variant})
    x = torch.rand(2, 3, 16, 16)
    labels = torch.tensor([3.0, 700.0]) if variant.get("embedding_type") == "positional" else torch.tensor([0.1, 5.0])
    y = net(x, labels)
    assert y.shape == x.shape
    y.pow(2).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_scale_by_sigma_divides_the_output():
    torch.manual_seed(0)
    opts = {**PRESETS["ddpmpp_vp_continuous_small"], "init_scale": 1.0}
    plain = build_network(opts)
    scaled = build_network({**opts, "scale_by_sigma": True})
    scaled.load_state_dict(plain.state_dict())
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([10, 900])
    sigmas = scaled.sigmas[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(scaled(x, t), plain(x, t) / sigmas)


def test_tiny_network_overfits_one_batch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = build_network("tiny8")
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(8, 1, 8, 8, generator=g)
    t = torch.rand(8, generator=g)
    xt = 0.7 * x0 + 0.7 * eps
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = (net(xt, 999 * t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_mlp_overfits_and_accepts_scalar_labels():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    for embedding in ("positional", "fourier"):
        net = build_network({**PRESETS["mlp2d"], "embedding": embedding})
        x, target = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
        labels = torch.rand(64, generator=g) * (999 if embedding == "positional" else 1)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        first = None
        for _ in range(150):
            loss = (net(x, labels) - target).pow(2).mean()
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first / 10
        torch.testing.assert_close(net(x[:3], torch.tensor(0.5)), net(x[:3], torch.full((3,), 0.5)))


# --- FIR resampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [(1, 3, 3, 1), (1, 2, 1)])
def test_fused_fir_convolutions_equal_separate_ops_inside(k):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12, 12)
    up = FIRConv2d(5, 4, 3, up=True, fir_kernel=k)
    ref = F.conv2d(resample.upsample_2d(x, k), up.weight, up.bias, padding=1)
    torch.testing.assert_close(up(x)[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], atol=1e-5, rtol=1e-5)
    down = FIRConv2d(5, 4, 3, down=True, fir_kernel=k)
    ref = resample.downsample_2d(F.conv2d(x, down.weight, down.bias, padding=1), k)
    torch.testing.assert_close(down(x)[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-5, rtol=1e-5)


def test_fir_resampling_keeps_constants_and_box_filter_is_nearest():
    c = torch.full((1, 2, 8, 8), 3.0)
    torch.testing.assert_close(resample.upsample_2d(c, (1, 3, 3, 1))[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    torch.testing.assert_close(resample.downsample_2d(c, (1, 3, 3, 1))[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(resample.upsample_2d(x, (1, 1)), resample.naive_upsample_2d(x))
    torch.testing.assert_close(resample.downsample_2d(x, (1, 1)), resample.naive_downsample_2d(x))


# --- errors -------------------------------------------------------------------------------------------

def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_score_sde_checkpoint(tmp_path / "nope.pth", "tiny8")


def test_wrong_file_formats_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth is corrupt or not a checkpoint this tool trusts"):
        load_score_sde_checkpoint(garbage, "tiny8")
    plain = tmp_path / "plain.pth"
    torch.save(build_network("tiny8").state_dict(), plain)  # a bare state dict, not the official format
    with pytest.raises(ValueError, match="'model' and 'ema'"):
        load_score_sde_checkpoint(plain, "tiny8")


def test_round_trip_of_an_official_style_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = build_network("tiny8")
    ema = [p.detach() + 1.0 for p in net.parameters() if p.requires_grad]
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"model": state, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": ema}, "step": 1},
               tmp_path / "ckpt.pth")
    loaded = load_score_sde_checkpoint(tmp_path / "ckpt.pth", "tiny8")
    for p, e in zip(loaded.parameters(), ema):
        torch.testing.assert_close(p, e)


def test_mismatched_config_names_offending_keys():
    ve = SHARED / "ncsnpp_ve_continuous.checkpoint.pth"
    with pytest.raises(ValueError, match=r"all_modules\.0\.W"):
        load_score_sde_checkpoint(ve, "ddpmpp_vp_continuous_small")
    with pytest.raises(ValueError, match=r"shape mismatch: .*all_modules\.0\.W \[16\] \(network: \[32\]\)"):
        load_score_sde_checkpoint(ve, {**PRESETS["ncsnpp_ve_continuous_small"], "nf": 32})


def test_bad_configs_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown network preset"):
        build_network("tiny9")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nff'\]"):
        build_network({**PRESETS["tiny8"], "nff": 8})
    with pytest.raises(ValueError, match="'ddpm' model is not implemented"):
        build_network({**PRESETS["tiny8"], "name": "ddpm"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_network({k: v for k, v in PRESETS["tiny8"].items() if k != "name"})
    with pytest.raises(ValueError, match="needs option"):
        build_network({k: v for k, v in PRESETS["tiny8"].items() if k != "image_size"})
    with pytest.raises(ValueError, match="only normalization='GroupNorm'"):
        build_network({**PRESETS["tiny8"], "normalization": "InstanceNorm"})
    with pytest.raises(ValueError, match="progressive must be one of"):
        build_network({**PRESETS["tiny8"], "progressive": "sideways"})
    net = build_network("tiny8")
    with pytest.raises(ValueError, match=r"expected x of shape \[N, 1, 8, 8\]"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))
