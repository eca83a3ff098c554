"""bench/memory_plan.py: its arithmetic against the shards FSDP2 really makes, and the real configs' sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def test_arithmetic_matches_real_shards_and_flux_is_12b():
    code = (
        "import sys; sys.path.insert(0, 'bench'); import memory_plan as m\n"
        "ok = m.cross_check()\n"
        "flux = m.MODELS[0]; m.measure(flux)\n"
        "print('flux', flux.params, max(flux.units[:-1]), flux.act_block_max)\n"
        "sys.exit(0 if ok else 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum("agree" in ln for ln in lines) == 2  # FSDP over 8 and HSDP 2 x 8: rank 0's bytes as computed
    params, unit, block = (float(x) for x in lines[-1].split()[1:])
    assert round(params / 1e9, 2) == 11.90  # FLUX.1-dev's published size: the config dict is the real one
    assert 3.0e8 < unit < 3.6e8 and block > 1e9  # a double-stream block: ~340M parameters, GBs of activations


def test_lora_adapter_count_is_what_peft_adds():
    """The LoRA row's adapter count (rank 16, attn preset) against the parameters peft really injects."""
    import sys

    import torch
    from diffusers import FluxTransformer2DModel

    sys.path.insert(0, str(ROOT / "bench"))
    import memory_plan as m

    from sdpo.families import get_family
    from sdpo.lora import adapters as lora

    torch.manual_seed(0)
    net = FluxTransformer2DModel(**m.SMALL_FLUX)
    counted = m.lora_numel("flux", net, 16)
    cfg = SimpleNamespace(lora_rank=16, lora_alpha=None, lora_dropout=0.0, lora_target_modules=None)
    lora.add_adapters(net, lora.lora_config(cfg, get_family("flux"), net), torch.float32, seed=0)
    injected = sum(p.numel() for n, p in net.named_parameters() if ".lora_" in n)
    assert counted == injected > 0
    model = m.Model("small", "flux", m.SMALL_FLUX, [], shapes=[torch.Size([10, 10])], lora_params=counted)
    row = m.plan(model, f"LoRA r{m.LORA_RANK} (DDP)", 1, None, "AdamW", 1, True)
    assert (row["weights"], row["optim"], row["reference"]) == (2 * 100 + 4 * counted, 8 * counted, 0)
