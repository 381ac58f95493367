"""Catalogue of off-chip memory parts: mobile DRAM (LPDDR4X / 5 / 5X) and storage (UFS 3.1 / 4.0, eMMC).

A preset names a part (``dram.part: lpddr5x-8533``, ``flash.part: ufs4.0``); the part gives the
per-pin data rate, energies, latencies and the sustained-bandwidth efficiency; the preset adds only
what a board decides (how many x16 channels, capacity). Sources are beside each figure; figures
that are ours are marked ``assumption``.

DRAM energy is split the way DRAMPower does it (Chandrasekar et al., DATE 2012 / DRAMPower tool):
per bit read or written (array + I/O), per row activation (ACT + PRE of one page), refresh power per
GiB and background (standby) power per channel while the NPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from workloads.errors import ConfigError


@dataclass(frozen=True)
class DramPart:
    name: str
    data_rate_mtps: float  # per pin
    channel_bits: int  # JEDEC channel width
    read_pj_per_bit: float
    write_pj_per_bit: float
    activate_pj: float  # ACT + PRE of one page
    page_bytes: int
    refresh_mw_per_gib: float
    background_mw_per_channel: float
    trcd_ns: float  # ACT -> column command
    tcl_ns: float  # read latency
    trp_ns: float  # precharge
    efficiency: float  # sustained / peak bandwidth for streaming DMA (turnaround, refresh, bank conflicts)
    source: str

    @property
    def channel_bandwidth_bytes_per_s(self) -> float:
        return self.data_rate_mtps * 1e6 * self.channel_bits / 8

    @property
    def access_latency_s(self) -> float:
        """A page-miss read: precharge, activate, CAS latency."""
        return (self.trp_ns + self.trcd_ns + self.tcl_ns) * 1e-9


@dataclass(frozen=True)
class FlashPart:
    name: str
    read_bandwidth_bytes_per_s: float  # sequential read
    read_pj_per_byte: float
    command_latency_s: float  # issue to first data of one read command (queue empty)
    queue_depth: int  # commands in flight
    source: str


# LPDDR4X anchor, assumption: read ~4.0 pJ/bit and write ~4.2 pJ/bit at the device (array + LVSTL I/O at
# VDDQ 0.6 V), of the order DRAMPower computes from LPDDR4 IDD4R/IDD4W - IDD3N currents at VDD2 1.1 V
# for an x16 channel at 3,200-4,266 MT/s; ACT+PRE ~1.0 nJ for a 2 KB page, background ~10 mW per
# channel (active standby), refresh ~4 mW per GiB (order of LPDDR4 IDD5AB averaged over tREFI).
# LPDDR5: "up to 30 % lower power" than LPDDR4X (Samsung 12 Gb LPDDR5 announcement, July 2019).
# LPDDR5X: "20 % better power efficiency" than LPDDR5 (Samsung 14 nm LPDDR5X announcement, Nov 2021).
# Timings: JEDEC JESD209-4/-5 values (tRCD = tRP = 18 ns, RL 17 CK at 6,400 MT/s = 21.25 ns; the same
# ns timings as gem5's LPDDR5_6400_1x16_BG_BL32 model of the JEDEC spec); 2 KB page in bank-group mode.
# Sustained efficiency 0.85, assumption: streaming DMA with long bursts reaches ~85 % of peak once
# read/write turnaround (tRTW, tWTR), refresh (tRFC / tREFI = 210 ns / 3.9 us = 5.4 %) and bank
# conflicts are paid; refresh alone bounds it at 0.946.
_LP4X = {
    "read_pj_per_bit": 4.0,
    "write_pj_per_bit": 4.2,
    "activate_pj": 1000.0,
    "refresh_mw_per_gib": 4.0,
    "background_mw_per_channel": 10.0,
}


def _scaled(k: float) -> dict:
    return {key: v * k for key, v in _LP4X.items()}


DRAM_PARTS = {
    p.name: p
    for p in (
        DramPart(
            "lpddr4x-4266",
            4266,
            16,
            page_bytes=2048,
            trcd_ns=18,
            tcl_ns=36 / 2.133,
            trp_ns=18,
            efficiency=0.85,
            source="JEDEC JESD209-4B (LPDDR4X 4,266 MT/s, RL 36 CK); energies: assumption "
            "(DRAMPower-style IDD estimate)",
            **_LP4X,
        ),
        DramPart(
            "lpddr5-6400",
            6400,
            16,
            page_bytes=2048,
            trcd_ns=18,
            tcl_ns=21.25,
            trp_ns=18,
            efficiency=0.85,
            source="JEDEC JESD209-5 (6,400 MT/s); energies: LPDDR4X x 0.7 (Samsung "
            "LPDDR5, 2019: up to 30 % lower power)",
            **_scaled(0.7),
        ),
        DramPart(
            "lpddr5x-8533",
            8533,
            16,
            page_bytes=2048,
            trcd_ns=18,
            tcl_ns=21.25,
            trp_ns=18,
            efficiency=0.85,
            source="JEDEC JESD209-5B (8,533 MT/s); energies: LPDDR5 x 0.8 (Samsung "
            "LPDDR5X, 2021: 20 % better power efficiency)",
            **_scaled(0.7 * 0.8),
        ),
        DramPart(
            "lpddr5x-9600",
            9600,
            16,
            page_bytes=2048,
            trcd_ns=18,
            tcl_ns=21.25,
            trp_ns=18,
            efficiency=0.85,
            source="JEDEC JESD209-5C (9,600 MT/s); energies as lpddr5x-8533",
            **_scaled(0.7 * 0.8),
        ),
    )
}

# UFS: JEDEC JESD220 (UFS 3.1 / 4.0) queues up to 32 commands (UTP transfer request list of 32 slots).
# Command latency 100 us / 80 us: assumption (order of a 4 KiB random-read latency of mobile UFS at
# queue depth 1, i.e. firmware + NAND tR ~ 50 us + link).
FLASH_PARTS = {
    p.name: p
    for p in (
        FlashPart(
            "ufs3.1",
            2.1e9,
            609.0,
            100e-6,
            32,
            "Samsung UFS 3.1 (2020): 2,100 MB/s sequential read; energy: UFS 4.0's 417 pJ/B x 1.46 "
            "(Samsung: UFS 4.0 is 46 % more power-efficient than UFS 3.1)",
        ),
        FlashPart(
            "ufs4.0",
            4.2e9,
            417.0,
            80e-6,
            32,
            "Samsung UFS 4.0 (2022): 4,200 MB/s sequential read, 6.0 MB/s per mA at VCC 2.5 V = 417 pJ/B",
        ),
        # eMMC 5.1 (JEDEC JESD84-B51): HS400 bus 400 MB/s, command queue of 32 tasks; sustained sequential
        # read 250 MB/s and 1,000 pJ/B: assumption (low-end storage, ~2.4x UFS 4.0's energy per byte).
        FlashPart(
            "emmc5.1",
            2.5e8,
            1000.0,
            150e-6,
            32,
            "JEDEC JESD84-B51 (HS400, 32-task queue); bandwidth and energy: assumption",
        ),
    )
}


def dram_part(name: object, field: str = "dram.part") -> DramPart:
    if name not in DRAM_PARTS:
        raise ConfigError(field, name, "one of " + ", ".join(DRAM_PARTS))
    return DRAM_PARTS[name]


def flash_part(name: object, field: str = "flash.part") -> FlashPart:
    if name not in FLASH_PARTS:
        raise ConfigError(field, name, "one of " + ", ".join(FLASH_PARTS))
    return FLASH_PARTS[name]
