"""`vitaccel sim --unit matmul`: real golden-model layers on the GVSA RTL, bit-exact."""

import json
import subprocess
import sys

import pytest

from vitaccel.flow.layer_sim import list_layers, simulate_layer


def test_list_layers():
    names = list_layers("digits-vit")
    assert names[0] == "patch_embed" and names[-1] == "head" and len(names) == 2 + 4 * 4
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitaccel.cli",
            "sim",
            "--unit",
            "matmul",
            "--list-layers",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and json.loads(r.stdout) == names


@pytest.mark.parametrize("layer", ["patch_embed", "blocks.1.attn.qkv", "blocks.3.mlp.fc2", "head"])
def test_digits_layer_bit_exact(layer):
    r = simulate_layer("digits-vit", layer, stall=0.2)
    assert r["mismatches"] == 0, r.get("first_mismatch")
    assert r["cycles"] > 0 and 0 < r["utilization"] <= 1


def test_unknown_layer_is_a_clear_error():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitaccel.cli",
            "sim",
            "--unit",
            "matmul",
            "--layer",
            "blocks.9.mlp.fc1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        r.returncode == 2
        and "choose one of: patch_embed" in r.stderr
        and len(r.stderr.strip().splitlines()) <= 2
    )
