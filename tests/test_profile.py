"""Mult-Adds / params counter (backbone.profile) against an independent counter and the paper's tables."""
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbone import mobilenet_v1
from backbone.profile import (
    LAYER_TYPES,
    count_mult_adds,
    main,
    paper_report,
    printed_match,
    profile_mobilenet,
)


def flop_counter_mult_adds(model: nn.Module, x: torch.Tensor) -> int:
    """torch's own counter: conv and (add)mm FLOPs are 2 per multiply-add."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("conv,shallow", [("separable", False), ("full", False), ("separable", True)])
@pytest.mark.parametrize("resolution", [224, 160])
def test_equals_flop_counter(alpha, conv, shallow, resolution):
    with torch.device("meta"):  # shapes only: no arithmetic, so the full-conv model at 224 px is instant
        model = mobilenet_v1(alpha, conv=conv, shallow=shallow)
        x = torch.empty(1, 3, resolution, resolution)
    assert count_mult_adds(model, x).mult_adds == flop_counter_mult_adds(model, x)


def test_equals_flop_counter_on_real_tensors_and_batches():
    torch.manual_seed(0)
    model = mobilenet_v1(0.25, num_classes=10)
    x = torch.randn(3, 3, 96, 80)  # non-square, batch 3: counts cover the whole batch
    result = count_mult_adds(model, x)
    assert result.mult_adds == flop_counter_mult_adds(model, x)
    one = count_mult_adds(model, x[:1]).mult_adds
    assert result.mult_adds == 3 * one


def test_table1_closed_form():
    """1.0 MobileNet-224 per layer type, written out from Table 1 (conv13 with stride 1)."""
    r = profile_mobilenet(1.0, 224)
    maps = [112, 112, 56, 56, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7]  # output size of conv0..conv13
    chs = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    dw = sum(9 * chs[i - 1] * maps[i] ** 2 for i in range(1, 14))
    pw = sum(chs[i - 1] * chs[i] * maps[i] ** 2 for i in range(1, 14))
    assert r.per_type["conv3x3"].mult_adds == 9 * 3 * 32 * 112 * 112
    assert r.per_type["conv_dw3x3"].mult_adds == dw
    assert r.per_type["conv1x1"].mult_adds == pw
    assert r.per_type["fc"].mult_adds == 1024 * 1000
    assert r.per_type["other"].mult_adds == 0
    assert r.mult_adds == 568_740_352
    assert r.per_type["conv1x1"].params == sum(chs[i - 1] * chs[i] for i in range(1, 14))
    assert r.per_type["conv_dw3x3"].params == 9 * sum(chs[:13])
    assert r.params == 4_209_088


def test_param_convention_and_totals():
    model = mobilenet_v1(0.5)
    r = count_mult_adds(model, torch.zeros(1, 3, 64, 64))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and ".bn." not in n)
    bn = sum(p.numel() for n, p in model.named_parameters() if ".bn." in n)
    assert r.params == weights
    assert r.params_norm == bn
    assert r.params_bias == 1000  # the FC bias: MobileNet's convs have none
    assert r.params_total == sum(p.numel() for p in model.parameters()) == r.params + bn + 1000
    # Table 9 (1.32 M) and Table 2 (74.59 % in 1x1) hold only without BN.
    assert printed_match(profile_mobilenet(0.5, 160).params / 1e6, "1.32")
    assert not printed_match((r.params + bn) / 1e6, "1.32")


@pytest.mark.parametrize(
    "alpha,resolution,conv,shallow,mult_adds,params",
    [
        (1.0, 224, "separable", False, "569", "4.2"),  # Tables 4, 6, 7, 8
        (0.75, 224, "separable", False, "325", "2.6"),  # Tables 5, 6
        (0.5, 224, "separable", False, "149", "1.3"),  # Table 6
        (0.25, 224, "separable", False, "41", "0.5"),  # Table 6
        (1.0, 192, "separable", False, "418", "4.2"),  # Table 7
        (1.0, 128, "separable", False, "186", "4.2"),  # Table 7
        (1.0, 224, "separable", True, "307", "2.9"),  # Table 5 shallow
        (1.0, 224, "full", False, None, "29.3"),  # Table 4 Conv MobileNet (Mult-Adds: see below)
        (1.0, 160, "separable", False, None, "4.2"),  # Table 7 (Mult-Adds: see below)
        (0.5, 160, "separable", False, None, "1.32"),  # Table 9 (Mult-Adds: see below)
    ],
)
def test_paper_rows(alpha, resolution, conv, shallow, mult_adds, params):
    r = profile_mobilenet(alpha, resolution, conv=conv, shallow=shallow)
    if mult_adds is not None:
        assert printed_match(r.mult_adds / 1e6, mult_adds), (r.mult_adds, mult_adds)
    assert printed_match(r.params / 1e6, params), (r.params, params)


def test_paper_rows_that_disagree_with_the_exact_count():
    """Three printed Mult-Adds do not round from the exact count; each has an arithmetic explanation."""
    full = profile_mobilenet(1.0, 224, conv="full")
    assert full.mult_adds == 4_867_293_184  # paper: 4866
    assert not printed_match(full.mult_adds / 1e6, "4866")
    assert printed_match((full.mult_adds - full.per_type["fc"].mult_adds) / 1e6, "4866")
    for alpha, printed in ((1.0, "290"), (0.5, "76")):  # Tables 7 and 9 at 160 px
        r160, r224 = profile_mobilenet(alpha, 160), profile_mobilenet(alpha, 224)
        assert not printed_match(r160.mult_adds / 1e6, printed)
        # conv maps shrink exactly by rho = 5/7, the FC does not: the paper scaled the whole total
        fc = r224.per_type["fc"].mult_adds
        assert (r224.mult_adds - fc) * 25 == (r160.mult_adds - fc) * 49
        assert printed_match(r224.mult_adds * (160 / 224) ** 2 / 1e6, printed)


def test_table2_shares():
    r = profile_mobilenet(1.0, 224)
    shares = {k: r.share(k) for k in ("conv1x1", "conv_dw3x3", "conv3x3", "fc")}
    assert printed_match(shares["conv1x1"][0], "94.86") and printed_match(shares["conv1x1"][1], "74.59")
    assert printed_match(shares["conv_dw3x3"][0], "3.06") and printed_match(shares["conv_dw3x3"][1], "1.06")
    assert printed_match(shares["fc"][0], "0.18") and printed_match(shares["fc"][1], "24.33")
    assert printed_match(shares["conv3x3"][1], "0.02")
    assert printed_match(shares["conv3x3"][0], "1.91")  # the paper prints 1.19 (digits swapped)
    with pytest.raises(ValueError, match="unknown layer type"):
        r.share("conv5x5")


def test_report_flags_exactly_the_known_mismatches():
    report = paper_report()
    text = " ".join(" ".join(report.lines).split())  # notes are wrapped: compare with whitespace collapsed
    assert report.compared >= 40
    assert sorted(report.mismatched) == sorted(
        [
            "Table 2: Conv 3x3 Mult-Adds %",
            "Table 4: Conv MobileNet Mult-Adds",
            "Table 7: 1.0 MobileNet-160 Mult-Adds",
            "Table 9: 0.50 MobileNet-160 Mult-Adds",
        ]
    )
    assert "1.19 is 1.91 with two digits swapped" in text
    assert "533.83 M" in text  # Table 1's conv13 's2' would give this, not 569
    assert "rho = 0.714 (10x10)" in text


def test_generic_modules_shared_and_transposed_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Conv2d(4, 4, 1)
            self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
            self.up = nn.ConvTranspose2d(8, 2, 2, stride=2)
            self.fc = nn.Linear(6, 5)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x, tokens):
            x = self.shared(self.shared(self.bn(x)))  # called twice: cost twice, params once
            x = self.up(self.grouped(x))
            return x.sum() + self.fc(tokens).sum()

    net = Net()
    net.train()
    x, tokens = torch.randn(2, 4, 5, 5), torch.randn(2, 7, 6)
    before = net.bn.running_mean.clone()
    r = count_mult_adds(net, (x, tokens))
    assert net.training and torch.equal(net.bn.running_mean, before)  # eval during the count, mode restored
    assert r.per_type["conv1x1"].mult_adds == 2 * (4 * 4 * 2 * 25)
    assert r.per_type["other"].mult_adds == 9 * 2 * 8 * 2 * 25 + 2 * 8 * 25 * 4 * 2
    assert r.per_type["fc"].mult_adds == 2 * 7 * 6 * 5
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()
        net(x, tokens)
    assert 2 * r.mult_adds == counter.get_total_flops()
    assert r.per_type["conv1x1"].params == 16
    assert r.params == 16 + 8 * 2 * 9 + 8 * 2 * 4 + 30
    assert r.params_bias == 4 + 8 + 2 + 5 and r.params_norm == 8
    assert r.per_module["shared"] == 2 * 4 * 4 * 50
    assert count_mult_adds(net, {"x": x, "tokens": tokens}).mult_adds == r.mult_adds


def test_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        count_mult_adds("mobilenet", torch.zeros(1))
    with pytest.raises(ValueError, match="resolution"):
        profile_mobilenet(1.0, 16)
    with pytest.raises(SystemExit):
        main(["--alpha", "0", "--json"])
    with pytest.raises(SystemExit):
        main(["--resolution", "abc"])


def test_cli_json(capsys):
    assert main(["--alpha", "0.5", "--resolution", "160", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("alpha", "resolution", "conv", "shallow", "mult_adds", "params", "per_type"):
        assert key in out
    assert (out["alpha"], out["resolution"], out["conv"], out["shallow"]) == (0.5, 160, "separable", False)
    assert out["mult_adds"] == 76_524_800 and out["params"] == 1_319_648
    assert set(out["per_type"]) == set(LAYER_TYPES)
    assert sum(v["mult_adds"] for v in out["per_type"].values()) == out["mult_adds"]

    assert main(["--conv", "full", "--shallow", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["conv"] == "full" and out["shallow"] is True
    assert out["per_type"]["conv_dw3x3"]["mult_adds"] == 0


def test_cli_paper_tables_and_text_mode(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "Table 2" in out and "Table 9" in out and "Figure 5" in out
    assert "Summary: 42/46 printed numbers match" in out
    assert main(["--alpha", "0.25"]) == 0
    assert "0.25 MobileNet-224" in capsys.readouterr().out
