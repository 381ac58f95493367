"""Any PyTorch model as a workload (quantmodel.model.module_trace): models that packages ship as code
(diffusers' DiT and PixArt transformers, torch's own transformer encoder as a plain ViT, a small CNN
with grouped and transposed convolutions) traced on the meta device, their MACs equal to torch's own
independent count (FlopCounterMode / 2), every read naming an op that ran before it, recipes applied
and simulated; an op the tracer cannot map and inputs the model refuses as one line, exit 2."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from codesign import api
from codesign.cli import main
from quantmodel.model.module_trace import trace_model
from workloads.errors import ConfigError

diffusers = pytest.importorskip("diffusers")


def dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, num_layers=2, sample_size=8, patch_size=2
    )


def dit_inputs():
    return {
        "hidden_states": torch.randn(2, 4, 8, 8),
        "timestep": torch.tensor([1, 2]),
        "class_labels": torch.tensor([3, 4]),
    }


def pixart():
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=64,
        caption_channels=32,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )


def pixart_inputs():
    return {
        "hidden_states": torch.randn(2, 4, 8, 8),
        "encoder_hidden_states": torch.randn(2, 7, 32),
        "timestep": torch.tensor([1, 2]),
    }


def vit():
    layer = torch.nn.TransformerEncoderLayer(64, 4, 256, batch_first=True, norm_first=True)
    return torch.nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)


def vit_inputs():
    return (torch.randn(2, 17, 64),)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 32, 1)
        self.up = torch.nn.ConvTranspose2d(32, 8, 2, stride=2, groups=2)
        self.norm = torch.nn.GroupNorm(2, 8)

    def forward(self, x):
        return torch.nn.functional.silu(self.norm(self.up(self.pw(torch.relu(self.dw(self.stem(x)))))))


def cnn_inputs():
    return (torch.randn(2, 3, 16, 16),)


MODELS = {
    "dit": (dit, dit_inputs),
    "pixart": (pixart, pixart_inputs),
    "vit": (vit, vit_inputs),
    "cnn": (CNN, cnn_inputs),
}


def _flop_macs(factory, inputs) -> int:
    with torch.device("meta"):
        model = factory()
    model.eval()
    args = inputs()
    args, kwargs = ((), args) if isinstance(args, dict) else (args, {})
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*(a.to("meta") for a in args), **{k: v.to("meta") for k, v in kwargs.items()})
    return fc.get_total_flops() // 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_equal_torch_count_and_reads_name_earlier_ops(name):
    factory, inputs = MODELS[name]
    tr = trace_model(factory, inputs, num_steps=2)
    step0 = tr.step_ops(0)
    assert sum(op.macs for op in step0) == _flop_macs(factory, inputs) > 0
    assert len(tr.ops) == 2 * len(step0) and tr.num_steps == 2
    seen: set[str] = set()
    for op in step0:
        assert op.name not in seen  # names are unique
        for producer, _, elements, _ in op.read_entries():
            assert producer == "" or producer in seen, (op.name, producer)
            assert elements > 0
        seen.add(op.name)
    kinds = {op.kind for op in step0}
    assert {"linear" if name != "cnn" else "conv"} <= kinds


def test_attention_models_map_to_attention_ops():
    vit_ops = trace_model(vit, vit_inputs).ops
    names = [op.name for op in vit_ops]
    for part in ("in_proj", "qk", "softmax", "av", "out_proj"):
        assert f"layers.0.self_attn.{part}" in names
    qk = next(op for op in vit_ops if op.name == "layers.0.self_attn.qk")
    assert (qk.batch, qk.m, qk.k, qk.n) == (2 * 4, 17, 16, 17)
    av = next(op for op in vit_ops if op.name == "layers.0.self_attn.av")
    assert av.read_entries()[0][0] == "layers.0.self_attn.softmax"
    pix = trace_model(pixart, pixart_inputs).ops
    cross = [op for op in pix if op.kind == "matmul_qk" and ".attn2." in op.name]
    assert cross and all(op.n == 7 for op in cross)  # 7 caption tokens


@pytest.mark.parametrize("recipe", ["asq-w8a8", "dynamic-w8a8", "tsq-tsw-w8a8"])
def test_recipes_apply_and_simulate(recipe):
    tr = api.trace_model(dit, dit_inputs, steps=3, recipe=recipe)
    q = [op for op in tr.ops if op.kind == "linear" and op.block >= 0]
    assert q and all(op.w_bits == 8 and op.weight_set >= 0 for op in q)
    res = api.simulate(tr, "edge-npu")
    assert res.macs == sum(op.macs for op in tr.ops) and res.latency_s > 0 and res.energy_j > 0


def test_unmappable_op_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "fftmodel.py").write_text(
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return torch.fft.rfft(x).real\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="fft_rfft"):
        trace_model("fftmodel:M", "2x8")
    capsys.readouterr()
    assert main(["trace", "--model", "fftmodel:M", "--input", "2x8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fft_rfft" in err[0] and "model op" in err[0]


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--model", "no_such_pkg_xyz:m", "--input", "2x8"], "model"),
        (["--model", "torch.nn:Identity"], "input"),
        (["--model", "torch.nn:LayerNorm", "--input", "2x8"], "model"),  # LayerNorm() needs arguments
        (["--model", "torch.nn:Identity", "--input", "2xA"], "input"),
        (["--workload", "stdit-tiny", "--model", "torch.nn:Identity", "--input", "2"], "workload"),
    ],
)
def test_bad_model_arguments(capsys, argv, field):
    assert main(["trace", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
