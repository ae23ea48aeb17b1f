"""`vitaccel sim --unit matmul`: real golden-model layers on the GVSA RTL, bit-exact."""

import json
import subprocess
import sys

import pytest

from vitaccel.flow.layer_sim import list_layers, simulate_layer


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "vitaccel.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_list_layers():
    names = list_layers("digits-vit")
    assert names[0] == "patch_embed" and names[-1] == "head" and len(names) == 2 + 4 * 6
    assert names[1:6] == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.qk",
        "blocks.0.attn.sv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
    ]
    r = _cli("sim", "--unit", "matmul", "--list-layers", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == names


@pytest.mark.parametrize("layer", ["patch_embed", "blocks.1.attn.qkv", "blocks.3.mlp.fc2", "head"])
def test_digits_layer_bit_exact(layer):
    r = simulate_layer("digits-vit", layer, stall=0.2)
    assert r["mismatches"] == 0, r.get("first_mismatch")
    assert r["cycles"] > 0 and 0 < r["utilization"] <= 1


@pytest.mark.parametrize(
    "layer, softmax",
    [("blocks.0.attn.qk", "uint8"), ("blocks.2.attn.sv", "uint8"), ("blocks.1.attn.sv", "log2")],
)
def test_digits_attention_bit_exact(layer, softmax):
    """Q K^T and P V per head (heads mode; log2: the shift-add mode) on real activations;
    the reference is checked against the golden model's own logits / context first."""
    r = simulate_layer("digits-vit", layer, stall=0.2, softmax=softmax)
    assert r["mismatches"] == 0, r.get("first_mismatch")
    assert r["heads"] == 4 and r["jobs"] == 4 and r["softmax"] == softmax
    quiet = simulate_layer("digits-vit", layer, softmax=softmax, seed=1)
    assert quiet["mismatches"] == 0 and quiet["cycles"] == quiet["model_cycles"]


def test_unknown_layer_is_a_clear_error():
    r = _cli("sim", "--unit", "matmul", "--layer", "blocks.9.mlp.fc1")
    assert (
        r.returncode == 2
        and "choose one of: patch_embed" in r.stderr
        and len(r.stderr.strip().splitlines()) <= 2
    )
