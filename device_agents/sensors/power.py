"""Power sensor backends. Each reads one device family's sensor and returns either an
instantaneous power (W) or a cumulative energy counter (J); the sampler turns either into the
mean power and energy of the timed window.

Backends, in the order they are tried:
- pi_pmic:      Raspberry Pi 5 PMIC, `vcgencmd pmic_read_adc` (sum of current*voltage per rail)
- hwmon_ina:    INA2xx / INA3221 current monitors in /sys/class/hwmon (Jetson, add-on boards)
- rapl:         Intel/AMD RAPL energy counters in /sys/class/powercap (wraps at max_energy_range_uj)
- power_supply: a discharging battery in /sys/class/power_supply (Android phones, laptops)
Parsing is hand-written because no library reads these formats without pulling in a daemon.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess

from device_agents.sensors.config import SensorConfig, read_int, read_text


class Unavailable(Exception):
    """A backend that cannot measure here; the message says why (shown in the bench result)."""


# --- Raspberry Pi 5 PMIC -------------------------------------------------------------------------

_PMIC_LINE = re.compile(r"^\s*(?P<rail>\S+)_(?P<unit>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>[-+0-9.eE]+|nan)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """`vcgencmd pmic_read_adc` text -> {rail: watts} for rails with both a current and a voltage.

    Rails are paired by name (VDD_CORE_A with VDD_CORE_V): the ADC channel numbers in brackets
    are not the same for a rail's current and voltage. EXT5V_V and BATT_V have no current channel.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.replace("\x00", "\n").splitlines():
        m = _PMIC_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        if value != value:  # nan
            continue
        (amps if m["unit"] == "A" else volts)[m["rail"]] = value
    return {rail: amps[rail] * volts[rail] for rail in sorted(amps) if rail in volts}


class PiPmic:
    name = "pi_pmic"
    kind = "power"
    interval_s = 0.1  # each read spawns vcgencmd (~5-20 ms on a Pi 5)
    scope = ("sum of the Raspberry Pi 5 PMIC rails (SoC core, DRAM, 3V3/1V8/1V1, HDMI, WLAN): excludes the "
             "USB/5V peripherals and the PMIC's own conversion losses, so it reads below wall power")

    def __init__(self, cfg: SensorConfig):
        self.cfg = cfg
        try:
            rails = parse_pmic_adc(cfg.run_vcgencmd("pmic_read_adc"))
        except FileNotFoundError:
            raise Unavailable("no vcgencmd (not a Raspberry Pi, or raspi-utils is not installed)")
        except (OSError, subprocess.SubprocessError) as e:
            raise Unavailable(f"vcgencmd pmic_read_adc failed ({type(e).__name__}): needs a Pi 5 and access to /dev/vcio")
        if not rails:
            raise Unavailable("vcgencmd pmic_read_adc printed no current/voltage rail pairs (a Pi 5 PMIC is needed)")
        self.rails = sorted(rails)

    def read(self) -> float:
        return sum(parse_pmic_adc(self.cfg.run_vcgencmd("pmic_read_adc")).values())

    def describe(self) -> dict:
        return {"backend": self.name, "rails": self.rails, "scope": self.scope}


# --- INA2xx / INA3221 hwmon ----------------------------------------------------------------------

INA_DRIVERS = ("ina209", "ina219", "ina220", "ina226", "ina230", "ina231", "ina233", "ina238", "ina260", "ina3221")
# Rails that already carry the whole module or board: when present they are the figure, and
# summing the sub-rails as well would count the same power twice (Jetson VDD_IN feeds CPU/GPU/SOC).
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN", "VDD_5V_IN")


def hwmon_rails(hwmon_dir: str) -> dict[str, tuple[str, ...]]:
    """One INA hwmon folder -> {label: files that give its power}.

    Kernel units (Documentation/hwmon): power*_input µW, curr*_input mA, in*_input mV. A channel
    counts only when it has a current: ina3221's in4-in6 are shunt voltages and in7 the "sum of
    shunt voltages", not rails. Channels labelled NC or disabled (in*_enable = 0) are skipped.
    """
    name = read_text(os.path.join(hwmon_dir, "name")) or os.path.basename(hwmon_dir)
    rails: dict[str, tuple[str, ...]] = {}
    for curr in sorted(glob.glob(os.path.join(hwmon_dir, "curr*_input"))):
        n = os.path.basename(curr)[len("curr"):-len("_input")]
        label = (read_text(os.path.join(hwmon_dir, f"in{n}_label")) or read_text(os.path.join(hwmon_dir, f"power{n}_label"))
                 or read_text(os.path.join(hwmon_dir, f"curr{n}_label")) or f"{name}.{n}")
        if label.upper() == "NC" or read_text(os.path.join(hwmon_dir, f"in{n}_enable")) == "0":
            continue
        power = os.path.join(hwmon_dir, f"power{n}_input")
        volts = os.path.join(hwmon_dir, f"in{n}_input")
        if os.path.exists(power):
            rails[label] = (power,)
        elif os.path.exists(volts):
            rails[label] = (curr, volts)
    return rails


def rail_watts(files: tuple[str, ...]) -> float:
    if len(files) == 1:
        uw = read_int(files[0])
        if uw is None:
            raise OSError(f"cannot read {files[0]}")
        return uw / 1e6
    ma, mv = read_int(files[0]), read_int(files[1])
    if ma is None or mv is None:
        raise OSError(f"cannot read {files[0]} / {files[1]}")
    return abs(ma) * mv / 1e6


class HwmonIna:
    name = "hwmon_ina"
    kind = "power"
    interval_s = 0.05

    def __init__(self, cfg: SensorConfig):
        rails: dict[str, tuple[str, ...]] = {}
        for d in sorted(glob.glob(cfg.sys("class", "hwmon", "hwmon*"))):
            if (read_text(os.path.join(d, "name")) or "") in INA_DRIVERS:
                for label, files in hwmon_rails(d).items():
                    rails[label if label not in rails else f"{label}@{os.path.basename(d)}"] = files
        if not rails:
            legacy = glob.glob(cfg.sys("bus", "i2c", "drivers", "ina3221x", "*", "iio:device*"))
            raise Unavailable("no INA2xx/INA3221 current monitor in /sys/class/hwmon" + (
                " (this Jetson has the legacy ina3221x IIO driver of JetPack <= 4.6, which this agent does not read)"
                if legacy else ""))
        totals = [r for r in rails if r.upper() in TOTAL_RAILS]
        self.used = {totals[0]: rails[totals[0]]} if totals else rails
        self.all_rails = sorted(rails)
        try:
            self.read()
        except OSError as e:
            raise Unavailable(f"INA rails found but unreadable: {e}")

    def read(self) -> float:
        return sum(rail_watts(files) for files in self.used.values())

    def describe(self) -> dict:
        method = (f"input rail {next(iter(self.used))} (the module's total)" if len(self.used) == 1 and
                  next(iter(self.used)).upper() in TOTAL_RAILS else "sum of all rails (no input rail found)")
        return {"backend": self.name, "rails": self.all_rails, "used": sorted(self.used), "scope": method}


# --- RAPL ------------------------------------------------------------------------------------------

def rapl_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Energy between two energy_uj readings; the counter wraps to 0 after max_energy_range_uj."""
    return after - before if after >= before else after + (max_range_uj - before) + 1


class Rapl:
    name = "rapl"
    kind = "energy"
    interval_s = 0.02  # the counter is exact; sampling only bounds where the window edges fall

    def __init__(self, cfg: SensorConfig):
        zones = {}
        for z in sorted(glob.glob(cfg.sys("class", "powercap", "intel-rapl:*"))):
            if re.fullmatch(r"intel-rapl:\d+", os.path.basename(z)):
                zones[read_text(os.path.join(z, "name")) or os.path.basename(z)] = z
        if not zones:
            raise Unavailable("no RAPL zones in /sys/class/powercap (not an Intel/AMD x86 CPU, or the "
                              "intel_rapl_msr module is not loaded)")
        # psys covers the platform (package + DRAM + more); otherwise the packages and their DRAM.
        if "psys" in zones:
            chosen = [zones["psys"]]
        else:
            chosen = [z for n, z in zones.items() if n.startswith("package")]
            chosen += [d for z in chosen for d in glob.glob(os.path.join(z, "intel-rapl:*:*"))
                       if read_text(os.path.join(d, "name")) == "dram"]
        self.zones = []
        for z in chosen:
            path = os.path.join(z, "energy_uj")
            try:
                with open(path) as f:
                    int(f.read())
            except PermissionError:
                raise Unavailable(f"{path} is readable by root only (since Linux 5.10, CVE-2020-8694): run the "
                                  f"agent as root or grant read access with a udev rule")
            except (OSError, ValueError) as e:
                raise Unavailable(f"cannot read {path}: {e}")
            self.zones.append((path, read_int(os.path.join(z, "max_energy_range_uj")) or (1 << 32) - 1,
                               read_text(os.path.join(z, "name")) or os.path.basename(z)))
        if not self.zones:
            raise Unavailable(f"RAPL zones {sorted(zones)} hold no package or psys zone")
        self._last = [read_int(p) for p, _, _ in self.zones]
        self._total_uj = 0

    def read(self) -> float:
        """Cumulative energy in J since this backend was created, wrap-arounds unfolded."""
        for i, (path, max_range, _) in enumerate(self.zones):
            now = read_int(path)
            if now is None:
                raise OSError(f"cannot read {path}")
            self._total_uj += rapl_delta_uj(self._last[i], now, max_range)
            self._last[i] = now
        return self._total_uj / 1e6

    def describe(self) -> dict:
        return {"backend": self.name, "zones": [n for _, _, n in self.zones],
                "scope": "CPU package energy (RAPL; psys when the platform has it)"}


# --- power_supply battery (Android, laptops) --------------------------------------------------------

def battery_watts(supply_dir: str) -> float:
    """Draw of a discharging battery in W. Sign conventions differ: the kernel ABI says negative
    current_now means discharging, many Android and ACPI drivers report it positive, so the
    magnitude is used and the sign is trusted only through `status`."""
    pw = read_int(os.path.join(supply_dir, "power_now"))  # µW, where the driver has it
    if pw is not None:
        return abs(pw) / 1e6
    ua = read_int(os.path.join(supply_dir, "current_now"))
    uv = read_int(os.path.join(supply_dir, "voltage_now"))
    if ua is None or uv is None:
        raise OSError(f"{supply_dir}: no readable current_now/voltage_now")
    return abs(ua) * uv / 1e12


class PowerSupply:
    name = "power_supply"
    kind = "power"
    interval_s = 0.1  # fuel gauges update a few times a second at most

    def __init__(self, cfg: SensorConfig):
        batteries = [d for d in sorted(glob.glob(cfg.sys("class", "power_supply", "*")))
                     if read_text(os.path.join(d, "type")) == "Battery"]
        if not batteries:
            raise Unavailable("no battery in /sys/class/power_supply")
        reasons = []
        for d in batteries:
            status = read_text(os.path.join(d, "status"))
            if status != "Discharging":
                reasons.append(f"{os.path.basename(d)} status is {status!r}: on external power the battery current "
                               f"is not the device's draw; unplug the charger (use adb over Wi-Fi)")
                continue
            try:
                battery_watts(d)
            except OSError as e:
                reasons.append(str(e))
                continue
            self.dir = d
            return
        raise Unavailable("; ".join(reasons))

    def read(self) -> float:
        if read_text(os.path.join(self.dir, "status")) != "Discharging":
            raise OSError(f"{os.path.basename(self.dir)} stopped discharging (charger plugged in?)")
        return battery_watts(self.dir)

    def describe(self) -> dict:
        return {"backend": self.name, "supply": os.path.basename(self.dir),
                "scope": "whole device draw from its battery (fuel gauge)"}


BACKENDS = (PiPmic, HwmonIna, Rapl, PowerSupply)


def discover(cfg: SensorConfig):
    """The first readable backend and, for the result, why each earlier one was not usable."""
    reasons = {}
    for backend in BACKENDS:
        try:
            return backend(cfg), reasons
        except Unavailable as e:
            reasons[backend.name] = str(e)
    return None, reasons
