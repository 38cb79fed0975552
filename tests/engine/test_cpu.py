"""The precision decided from the CPU's features, with made-up CPUs."""

from __future__ import annotations

import pytest

from sam2_server.engine import Engine
from sam2_server.engine.cpu import CpuFeatures, decide_precision, read_cpuinfo
from sam2_server.errors import ConfigError

AVX2 = CpuFeatures.from_flags({"sse4_2", "avx", "avx2", "fma"}, "AMD EPYC")
AVX512 = CpuFeatures.from_flags({"avx2", "avx512f", "avx512bw"}, "Skylake")
COOPER_LAKE = CpuFeatures.from_flags({"avx2", "avx512f", "avx512_bf16"}, "Cooper Lake")
SAPPHIRE_RAPIDS = CpuFeatures.from_flags(
    {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, "Sapphire Rapids"
)
GRAVITON3 = CpuFeatures.from_flags({"fp", "asimd", "sve", "bf16"})  # Arm's "Features"


def test_features_from_flags():
    assert (AVX2.avx2, AVX2.avx512, AVX2.bf16, AVX2.amx) == (True, False, False, False)
    assert (AVX512.avx512, AVX512.bf16) == (True, False)
    assert (COOPER_LAKE.bf16, COOPER_LAKE.amx) == (True, False)
    assert (SAPPHIRE_RAPIDS.bf16, SAPPHIRE_RAPIDS.amx) == (True, True)
    assert GRAVITON3.bf16


@pytest.mark.parametrize("cpu", [None, AVX2, AVX512, COOPER_LAKE, SAPPHIRE_RAPIDS, GRAVITON3])
def test_fp32_is_fp32_on_any_cpu(cpu):
    assert decide_precision("fp32", "cpu", cpu) == "fp32"


@pytest.mark.parametrize("cpu", [None, AVX2, AVX512])
def test_auto_stays_fp32_without_native_bf16(cpu):
    assert decide_precision("auto", "cpu", cpu) == "fp32"


@pytest.mark.parametrize("cpu", [COOPER_LAKE, SAPPHIRE_RAPIDS, GRAVITON3])
def test_bf16_and_auto_choose_bf16_on_a_cpu_with_native_bf16(cpu):
    assert decide_precision("bf16", "cpu", cpu) == "bf16"
    assert decide_precision("auto", "cpu", cpu) == "bf16"


@pytest.mark.parametrize("cpu", [None, AVX2, AVX512])
def test_bf16_without_native_bf16_is_refused_in_one_line(cpu):
    with pytest.raises(ConfigError, match="PRECISION=bf16 needs a CPU with native bfloat16") as e:
        decide_precision("bf16", "cpu", cpu)
    assert "\n" not in str(e.value)
    if cpu is not None:
        assert cpu.model in str(e.value)


def test_gpus_are_not_judged_by_cpu_flags():
    assert decide_precision("auto", "cuda", AVX2) == "bf16"
    assert decide_precision("bf16", "cuda", AVX2) == "bf16"
    assert decide_precision("auto", "mps", None) == "fp32"
    assert decide_precision("fp32", "cuda", None) == "fp32"


def test_read_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n"
    )
    assert read_cpuinfo(info) == ("AMD EPYC 7B13", frozenset({"fpu", "avx", "avx2", "fma"}))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU part\t: 0xd40\n")
    assert read_cpuinfo(arm)[1] == frozenset({"fp", "asimd", "bf16"})
    assert read_cpuinfo(tmp_path / "missing")[1] == frozenset()


def test_engine_refuses_bf16_at_start_on_this_kind_of_cpu(reduced_settings, monkeypatch):
    monkeypatch.setattr("sam2_server.engine.compute.cpu_features", lambda: AVX2)
    with pytest.raises(ConfigError, match="PRECISION=bf16 needs a CPU"):
        Engine(reduced_settings.with_(precision="bf16"))
    engine = Engine(reduced_settings.with_(precision="auto"))  # nothing loaded: cheap
    assert engine.compute.bf16 is False
    stats = engine.stats()
    assert stats["precision"] == "fp32"
    assert stats["encoder_backend"] == "torch"
    assert stats["cpu_features"] == {
        "model": "AMD EPYC",
        "avx2": True,
        "avx512": False,
        "bf16": False,
        "amx": False,
    }


def test_engine_takes_bf16_on_a_native_bf16_cpu(reduced_settings, monkeypatch):
    monkeypatch.setattr("sam2_server.engine.compute.cpu_features", lambda: SAPPHIRE_RAPIDS)
    engine = Engine(reduced_settings.with_(precision="bf16"))
    assert engine.compute.bf16 is True
    assert engine.stats()["cpu_features"]["amx"] is True
