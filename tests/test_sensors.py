"""Power and thermal backends on recorded sensor output from real devices (tests/data/sensors,
sources in its README), and the sampler end to end on a fake sysfs tree whose RAPL counter a
thread advances at a known rate. No sensor exists on this machine."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from device_agents.sensors import RunMonitor, SensorConfig, power, thermal
from device_agents.sensors.system import parse_cpuinfo
from kit.devices.local import LocalDevice

DATA = Path(__file__).parent / "data" / "sensors"
PMIC_LOAD_W = sum(a * v for a, v in [
    (0.09368929, 3.699776), (0.08783370, 3.310033), (0.18054710, 1.805126), (0.22543980, 1.104761),
    (0.06666720, 0.6014646), (0.17566740, 1.110255), (0.37670900, 0.8014644), (6.22421, 0.861733),
    (0.00006105, 3.313183), (0.00036630, 3.306773), (0.00305250, 0.8002922), (0.02417580, 5.08664)])


def tree(tmp_path, name) -> SensorConfig:
    dst = tmp_path / name
    shutil.copytree(DATA / name, dst)
    return SensorConfig(sys_root=str(dst / "sys"), vcgencmd=(str(tmp_path / "no-vcgencmd"),))


def fake_vcgencmd(tmp_path, pmic="pi5_pmic_read_adc_load.txt", throttled=("pi_get_throttled_ok.txt", "pi_get_throttled_undervolt.txt")):
    """A stand-in `vcgencmd` that prints recorded output: get_throttled answers its first call with
    throttled[0] and later calls with throttled[1] (before and after a run)."""
    d = tmp_path / "vc"
    d.mkdir()
    shutil.copy(DATA / pmic, d / "pmic.txt")
    shutil.copy(DATA / throttled[0], d / "thr0.txt")
    shutil.copy(DATA / throttled[1], d / "thr1.txt")
    script = d / "vcgencmd"
    script.write_text(f"""#!{sys.executable}
import pathlib, sys
d = pathlib.Path(__file__).parent
if sys.argv[1] == "pmic_read_adc":
    sys.stdout.write((d / "pmic.txt").read_text())
elif sys.argv[1] == "get_throttled":
    n = d / "count"
    c = int(n.read_text()) if n.exists() else 0
    n.write_text(str(c + 1))
    sys.stdout.write((d / ("thr0.txt" if c == 0 else "thr1.txt")).read_text())
else:
    sys.exit(1)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


class RaplWriter(threading.Thread):
    """Advances energy_uj at `watts`, wrapping at max_energy_range_uj, as the kernel counter does."""

    def __init__(self, zone: Path, watts: float, headroom_j: float):
        super().__init__(daemon=True)
        self.path = zone / "energy_uj"
        self.max = int((zone / "max_energy_range_uj").read_text())
        self.watts = watts
        self.energy_uj = self.max - headroom_j * 1e6  # wraps once `headroom_j` joules have passed
        self.stop = threading.Event()
        self.wrapped = False

    def run(self):
        t = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            self.energy_uj += self.watts * (now - t) * 1e6
            t = now
            self.wrapped |= self.energy_uj > self.max
            tmp = self.path.with_name("energy_uj.tmp")
            tmp.write_text(str(int(self.energy_uj) % (self.max + 1)))
            os.replace(tmp, self.path)  # a reader never sees half a number
            self.stop.wait(0.004)


# --- parsers on recorded output -----------------------------------------------------------------

def test_pi5_pmic_rails_are_paired_by_name():
    rails = power.parse_pmic_adc((DATA / "pi5_pmic_read_adc_load.txt").read_text())
    assert len(rails) == 12 and "EXT5V" not in rails and "BATT" not in rails  # voltage-only channels
    assert rails["VDD_CORE"] == pytest.approx(6.22421 * 0.861733)
    assert sum(rails.values()) == pytest.approx(PMIC_LOAD_W)
    nul = (DATA / "pi5_pmic_read_adc_load.txt").read_text().replace("\n", "\x00")  # mailbox style
    assert power.parse_pmic_adc(nul) == rails
    assert power.parse_pmic_adc((DATA / "pi4_pmic_read_adc_unsupported.txt").read_text()) == {}


def test_get_throttled_bits():
    ok = thermal.parse_throttled((DATA / "pi_get_throttled_ok.txt").read_text())
    bad = thermal.parse_throttled((DATA / "pi_get_throttled_undervolt.txt").read_text())
    assert ok == 0 and thermal.decode_throttled(ok) == []
    assert thermal.decode_throttled(bad) == ["under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"]
    assert thermal.parse_throttled("garbage") is None


def test_jetson_orin_nano_uses_the_input_rail_only(tmp_path):
    b = power.HwmonIna(tree(tmp_path, "jetson_orin_nano"))
    assert b.describe()["rails"] == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]  # in7 (shunt sum) is no rail
    assert b.describe()["used"] == ["VDD_IN"]  # summing the sub-rails too would double count
    assert b.read() == pytest.approx(4.984 * 0.960)


def test_jetson_agx_orin_sums_rails_and_skips_nc_and_disabled(tmp_path):
    b = power.HwmonIna(tree(tmp_path, "jetson_agx_orin"))
    assert b.describe()["rails"] == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC"]
    assert b.read() == pytest.approx(18.792 * 0.140 + 18.784 * 0.020 + 4.968 * 0.360)


def test_ina226_power_input_is_microwatts(tmp_path):
    assert power.HwmonIna(tree(tmp_path, "ina226_addon")).read() == pytest.approx(4.11312)


def test_rapl_picks_package_and_dram_and_unfolds_wraps(tmp_path):
    cfg = tree(tmp_path, "intel_rapl")
    b = power.Rapl(cfg)
    assert [n for _, _, n in b.zones] == ["package-0", "dram"]
    assert power.rapl_delta_uj(262143328800, 50, 262143328850) == 101
    assert power.rapl_delta_uj(100, 400, 262143328850) == 300
    pkg = Path(cfg.sys_root) / "class" / "powercap" / "intel-rapl:0" / "energy_uj"
    pkg.write_text("50")  # wrapped from 26963529117: (max - old) + 50 + 1 µJ later
    assert b.read() == pytest.approx((262143328850 - 26963529117 + 51) / 1e6)


def test_battery_backends_and_sign_conventions(tmp_path):
    with pytest.raises(power.Unavailable, match="Not charging"):
        power.PowerSupply(tree(tmp_path, "android_pixel3a_usb"))
    assert power.PowerSupply(tree(tmp_path, "laptop_bat0_discharging")).read() == pytest.approx(0.756 * 12.6)
    assert power.PowerSupply(tree(tmp_path, "android_discharging_negative")).read() == pytest.approx(0.412 * 3.815175)


def test_no_sensor_gives_every_backend_reason(tmp_path):
    backend, reasons = power.discover(SensorConfig(sys_root=str(tmp_path), vcgencmd=(str(tmp_path / "none"),)))
    assert backend is None and set(reasons) == {"pi_pmic", "hwmon_ina", "rapl", "power_supply"}


def test_thermal_zones_and_arm_core_types(tmp_path):
    assert thermal.zones(tree(tmp_path, "jetson_orin_nano")) == {"cpu-thermal": 51.187, "gpu-thermal": 50.218}
    info = parse_cpuinfo("processor\t: 0\nCPU part\t: 0xd05\n\nprocessor\t: 4\nCPU part\t: 0xd0b\n")
    assert info["core_types"] == {0: "Cortex-A55", 4: "Cortex-A76"}


# --- the sampler end to end ---------------------------------------------------------------------

def test_monitor_measures_idle_then_load_across_a_counter_wrap(tmp_path):
    cfg = tree(tmp_path, "intel_rapl")
    writer = RaplWriter(Path(cfg.sys_root) / "class" / "powercap" / "intel-rapl:0", watts=2.0, headroom_j=1.5)
    writer.start()
    try:
        mon = RunMonitor(cfg, power_requested=True, idle_s=0.6)
        mon.start()  # idle at 2 W
        writer.watts = 7.0
        time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(1.0)
        t1 = time.monotonic()
        result, therm = mon.finish((t0, t1), 100, None)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.wrapped
    assert result["available"] and result["backend"] == "rapl"
    assert result["idle_w"] == pytest.approx(2.0, rel=0.05)
    assert result["mean_w"] == pytest.approx(7.0, rel=0.05)
    assert result["net_w"] == pytest.approx(5.0, rel=0.1)
    assert result["energy_mj_per_inference"] == pytest.approx(result["mean_w"] * (t1 - t0) * 1e3 / 100)
    assert therm["available"] is False  # the RAPL tree has no thermal zones or cpufreq


@pytest.fixture
def agent_env(monkeypatch):
    def apply(cfg: SensorConfig):
        monkeypatch.setenv("EDGEKIT_SYSFS_ROOT", cfg.sys_root)
        monkeypatch.setenv("EDGEKIT_VCGENCMD", cfg.vcgencmd[0])
    return apply


def test_agent_bench_on_a_fake_pi5_reports_power_and_throttling(onnx_bundle, tmp_path, agent_env):
    cfg = tree(tmp_path, "jetson_orin_nano")  # thermal zones; power comes from the PMIC first
    agent_env(SensorConfig(sys_root=cfg.sys_root, vcgencmd=(fake_vcgencmd(tmp_path),)))
    doc = LocalDevice().run_agent(["bench", "--bundle", str(onnx_bundle.path), "--opts",
                                   json.dumps({"power": True, "idle_s": 0.5, "power_min_window_s": 0.6, "runs": 20})])
    assert doc["ok"], doc
    r = doc["result"]
    p = r["power"]
    assert p["available"] and p["backend"] == "pi_pmic" and p["samples"] >= 2
    assert p["mean_w"] == pytest.approx(PMIC_LOAD_W) and p["idle_w"] == pytest.approx(PMIC_LOAD_W)
    assert r["window_s"] >= 0.6  # the window was stretched to span several sensor readings
    assert p["energy_mj_per_inference"] == pytest.approx(p["mean_w"] * r["window_s"] * 1e3 / r["latency"]["runs"], rel=1e-6)
    t = r["thermal"]
    assert t["available"] and t["before_c"]["cpu-thermal"] == 51.187
    assert t["throttled"] is True and "under_voltage" in t["evidence"][0]


def test_agent_bench_on_a_fake_rapl_counter(onnx_bundle, tmp_path, agent_env):
    cfg = tree(tmp_path, "intel_rapl")
    agent_env(cfg)
    writer = RaplWriter(Path(cfg.sys_root) / "class" / "powercap" / "intel-rapl:0", watts=5.0, headroom_j=2.0)
    writer.start()
    try:
        doc = LocalDevice().run_agent(["bench", "--bundle", str(onnx_bundle.path), "--opts",
                                       json.dumps({"power": True, "idle_s": 0.5, "runs": 20})])
    finally:
        writer.stop.set()
        writer.join()
    assert doc["ok"], doc
    p = doc["result"]["power"]
    assert p["available"] and p["zones"] == ["package-0", "dram"]
    assert p["mean_w"] == pytest.approx(5.0, rel=0.05) and p["net_w"] == pytest.approx(0.0, abs=0.3)


def test_agent_bench_without_sensors_says_why(onnx_bundle, tmp_path, agent_env):
    agent_env(SensorConfig(sys_root=str(tmp_path), vcgencmd=(str(tmp_path / "none"),)))
    doc = LocalDevice().run_agent(["bench", "--bundle", str(onnx_bundle.path), "--opts", json.dumps({"power": True, "runs": 5})])
    p = doc["result"]["power"]
    assert p["available"] is False and "rapl" in p["reason"] and "mean_w" not in p
    assert doc["result"]["thermal"]["available"] is False and "no thermal zones" in doc["result"]["thermal"]["reason"]


def test_cooldown_waits_for_the_hottest_zone(tmp_path):
    cfg = tree(tmp_path, "jetson_orin_nano")
    assert thermal.wait_cool(cfg, 60.0, 5.0)["reached"] is True
    late = thermal.wait_cool(cfg, 40.0, 0.3, poll_s=0.05)
    assert late["reached"] is False and late["waited_s"] >= 0.3 and late["end_c"] == 51.187
    assert thermal.wait_cool(SensorConfig(sys_root=str(tmp_path)), 40.0, 1.0)["reached"] is None


def test_a_clock_drop_during_the_run_is_flagged(tmp_path):
    # A Pi 5 cluster (2.4 GHz max) that the firmware pulls down to 1.5 GHz mid-run.
    pol = tmp_path / "sys" / "devices" / "system" / "cpu" / "cpufreq" / "policy0"
    pol.mkdir(parents=True)
    for name, value in {"related_cpus": "0 1 2 3", "scaling_governor": "ondemand", "cpuinfo_max_freq": "2400000",
                        "scaling_max_freq": "2400000", "cpuinfo_min_freq": "1500000", "scaling_cur_freq": "2400000"}.items():
        (pol / name).write_text(value + "\n")
    cfg = SensorConfig(sys_root=str(tmp_path / "sys"), vcgencmd=(str(tmp_path / "none"),))
    before = thermal.snapshot(cfg)
    samples = [(0.0, thermal.freq_sample(cfg))]
    (pol / "scaling_cur_freq").write_text("1500000\n")
    samples.append((0.25, thermal.freq_sample(cfg)))
    out = thermal.summary(before, thermal.snapshot(cfg), samples, busy_cpus=[2])
    assert out["throttled"] is True and "2400000 to 1500000" in out["evidence"][0]
    steady = thermal.summary(before, thermal.snapshot(cfg), samples[:1], busy_cpus=[2])
    assert steady["throttled"] is False
    assert thermal.summary(before, before, samples, busy_cpus=[7])["cpufreq"] == {}  # another cluster's CPUs


def test_info_reports_big_little_clusters_from_a_recorded_rk3588(tmp_path, monkeypatch):
    shutil.copytree(DATA / "rk3588_rock5b", tmp_path / "rk")
    monkeypatch.setenv("EDGEKIT_SYSFS_ROOT", str(tmp_path / "rk" / "sys"))
    monkeypatch.setenv("EDGEKIT_PROCFS_ROOT", str(tmp_path / "rk" / "proc"))
    monkeypatch.setenv("EDGEKIT_VCGENCMD", str(tmp_path / "none"))
    r = LocalDevice().run_agent(["info"], timeout=120)["result"]  # the real agent, pointed at the recording
    assert r["core_types"] == ["Cortex-A55", "Cortex-A76"]
    assert [(c["policy"], c["cpus"], c["core_types"], c["max_mhz"], c["cur_mhz"], c["governor"]) for c in r["clusters"]] == [
        ("policy0", [0, 1, 2, 3], ["Cortex-A55"], 1800.0, 1008.0, "ondemand"),
        ("policy4", [4, 5], ["Cortex-A76"], 2400.0, 408.0, "ondemand"),
        ("policy6", [6, 7], ["Cortex-A76"], 2400.0, 408.0, "ondemand")]
    assert r["ram_mb"] is None  # no meminfo in the recording: not a made-up number
