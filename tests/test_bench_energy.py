"""Energy counts only what the run uses (issue #13 item 6): the GPUs the models sit on (through
CUDA_VISIBLE_DEVICES), and RAPL's package domains without psys, which already contains them."""

from __future__ import annotations

from specdec.bench.monitor import physical_gpus, rapl_package_zones


def test_torch_indices_map_to_the_physical_gpus_cuda_visible_devices_lets_through():
    assert physical_gpus([0, 1], None) == ["0", "1"]
    assert physical_gpus([0], "3,5") == ["3"]
    assert physical_gpus([1], "3,5") == ["5"]
    assert physical_gpus([0], "GPU-8b2c") == ["GPU-8b2c"]


def test_rapl_sums_package_domains_and_leaves_psys_out(tmp_path):
    for index, name in enumerate(["package-0", "psys", "package-1"]):
        zone = tmp_path / f"intel-rapl:{index}"
        zone.mkdir()
        (zone / "name").write_text(name + "\n")
        (zone / "energy_uj").write_text("100\n")
        sub = tmp_path / f"intel-rapl:{index}:0"  # a subdomain (core / dram): inside its package
        sub.mkdir()
        (sub / "name").write_text("core\n")
    assert [name for _, name in rapl_package_zones(str(tmp_path))] == ["package-0", "package-1"]
