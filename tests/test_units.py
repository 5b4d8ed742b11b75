import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuhub.limits import MAX_MEMORY_MIB, MAX_WALLTIME
from gpuhub.units import format_memory, format_walltime, parse_memory, parse_walltime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("100:00:00", 360000),
        ("1-12:00:00", 36 * 3600),
        ("2-0", 48 * 3600),
        ("1-02:30", 26 * 3600 + 1800),
        ("90", 90 * 60),  # bare number = minutes, as sbatch
        ("10:30", 10 * 60 + 30),  # M:S, as sbatch
        ("90m", 5400),
        ("2h", 7200),
        ("1d12h", 36 * 3600),
        ("45s", 45),
        ("1h30m", 5400),
        (30, 1800),
    ],
)
def test_walltime_forms(text, seconds):
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("bad", ["", "3x", "1:60:00", "-1", "0", "1--2", "h", "1-2-3", "00:00:00", True])
def test_walltime_rejects(bad):
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(bad)


@given(st.integers(min_value=1, max_value=MAX_WALLTIME))
def test_walltime_round_trip(seconds):
    assert parse_walltime(format_walltime(seconds)) == seconds


@pytest.mark.parametrize("value", [MAX_WALLTIME // 60 + 1, "367d", "9" * 400, "9" * 5000 + "h", "1" * 13 + "-00:00:00"])
def test_walltime_has_an_upper_bound(value):
    with pytest.raises(ValueError, match="limit of 366 days"):
        parse_walltime(value)


@pytest.mark.parametrize("value", ["65T", "9" * 400, "99999999T", "1e400"])
def test_memory_has_an_upper_bound(value):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(value)


def test_walltime_format_is_slurm_canonical():
    assert format_walltime(3600) == "01:00:00"
    assert format_walltime(100 * 3600) == "4-04:00:00"


@pytest.mark.parametrize(
    ("text", "mib"),
    [("32G", 32768), ("32GB", 32768), ("32GiB", 32768), ("500M", 500), ("1T", 1 << 20), ("1.5G", 1536), ("2048", 2048)],
)
def test_memory_forms(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("bad", ["", "lots", "12X", "0", "-5G", "0.1K"])
def test_memory_rejects(bad):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(bad)


@given(st.integers(min_value=1, max_value=MAX_MEMORY_MIB))
def test_memory_round_trip(mib):
    assert parse_memory(format_memory(mib)) == mib
