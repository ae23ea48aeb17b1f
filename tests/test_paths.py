"""vitaccel.flow.paths: the weighted longest register-to-register path of a netlist."""

from vitaccel.flow.paths import cell_weight, worst_paths


def _netlist(cells: dict, nets: dict, ports: dict | None = None) -> dict:
    """A Yosys-style JSON module: cells {name: (type, {port: (dir, [bits])})}."""
    return {
        "modules": {
            "top": {
                "ports": ports or {},
                "cells": {
                    name: {
                        "type": typ,
                        "port_directions": {p: d for p, (d, _) in conns.items()},
                        "connections": {p: bits for p, (_, bits) in conns.items()},
                    }
                    for name, (typ, conns) in cells.items()
                },
                "netnames": {name: {"bits": bits} for name, bits in nets.items()},
            }
        }
    }


def _ff(d, q):
    return ("FDRE", {"C": ("input", [1]), "D": ("input", [d]), "Q": ("output", [q])})


def _lut(ins, out):
    conns = {f"I{i}": ("input", [b]) for i, b in enumerate(ins)}
    conns["O"] = ("output", [out])
    return ("LUT4", conns)


def _carry(ci, s, co):
    return ("CARRY4", {"CI": ("input", [ci]), "S": ("input", [s]), "CO": ("output", [co])})


def test_weights():
    assert cell_weight("LUT6") == 1 and cell_weight("MUXF7") == 1
    assert cell_weight("CARRY4") == 0.25 and cell_weight("CARRY8") == 0.25
    assert cell_weight("RAM64M8") == 1  # a LUT RAM read
    for boundary in ("FDRE", "RAMB36E2", "DSP48E2", "SRLC32E"):
        assert cell_weight(boundary) is None


def test_mixed_lut_carry_path_beats_the_longer_carry_chain():
    # a: FF -> 4 LUTs -> 2 CARRY -> FF (4.5 levels, 6 cells)
    # b: FF -> 12 CARRY -> FF (3 levels, 12 cells: what ltp would report as longest)
    cells = {"fa": _ff(10, 20), "fb": _ff(11, 40)}
    prev = 20
    for i in range(4):
        cells[f"la{i}"] = _lut([prev], 21 + i)
        prev = 21 + i
    cells["ca0"] = _carry(prev, 2, 30)
    cells["ca1"] = _carry(30, 2, 31)
    cells["ea"] = _ff(31, 32)
    prev = 40
    for i in range(12):
        cells[f"cb{i}"] = _carry(prev, 2, 41 + i)
        prev = 41 + i
    cells["eb"] = _ff(prev, 60)
    nets = {"src_a": [20], "dst_a": [32], "src_b": [40], "dst_b": [60]}
    worst = worst_paths(_netlist(cells, nets))
    assert [(p.levels, p.luts, p.carries, p.start, p.end) for p in worst] == [
        (4.5, 4, 2, "src_a", "dst_a"),
        (3.0, 0, 12, "src_b", "dst_b"),
    ]
    assert worst_paths(_netlist(cells, nets), limit=4.0) == worst[:1]


def test_reconvergent_paths_take_the_longest_branch():
    # FF q=5 -> L1 -> L2 -> L3 ; FF q=5 -> L3 directly; L3 -> FF: 3 levels
    cells = {
        "src": _ff(9, 5),
        "l1": _lut([5], 6),
        "l2": _lut([6], 7),
        "l3": _lut([5, 7], 8),
        "dst": _ff(8, 9),
    }
    (p,) = worst_paths(_netlist(cells, {"q": [5], "d": [9]}))
    assert (p.levels, p.start, p.end) == (3.0, "q", "d")


def test_lutram_read_is_a_level_and_its_write_ends_a_path():
    ram = (
        "RAM64M8",
        {
            "ADDRA": ("input", [20]),
            "DIA": ("input", [21]),
            "WE": ("input", [22]),
            "DOA": ("output", [23]),
        },
    )
    cells = {
        "ra": _ff(1, 10),  # read address register
        "wd": _ff(1, 11),  # write data register
        "l0": _lut([10], 20),  # address logic
        "l1": _lut([11], 21),  # write data logic (ends at the RAM)
        "l2": _lut([11], 22),
        "ram": ram,
        "l3": _lut([23], 24),
        "out": _ff(24, 25),
    }
    nets = {"raddr": [10], "wdata": [11], "q": [25]}
    worst = worst_paths(_netlist(cells, nets))
    # raddr -> LUT -> RAM read -> LUT -> q: 3 levels; wdata -> LUT -> RAM write: 1 level
    assert (worst[0].levels, worst[0].start, worst[0].end) == (3.0, "raddr", "q")
    assert worst[1].levels == 1.0 and worst[1].start == "wdata"


def test_output_ports_end_paths():
    cells = {"src": _ff(1, 5), "l0": _lut([5], 6), "l1": _lut([6], 7)}
    ports = {"o": {"direction": "output", "bits": [7]}}
    (p,) = worst_paths(_netlist(cells, {"q": [5]}, ports))
    assert (p.levels, p.end) == (2.0, "<port o>")
