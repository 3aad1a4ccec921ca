"""Reading a prepared dataset's day files: what np.load gives, faster, and the same clear errors."""

import numpy as np
import pytest

from precip_cvae.data import dataset
from precip_cvae.errors import InputError


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 5 * 7, dtype=np.float32).reshape(1, 10, 7) / 3,  # a day's target
        np.linspace(-1, 1, 6 * 4 * 3).reshape(6, 4, 3),  # float64
        np.arange(12, dtype=">f4").reshape(3, 4),  # big-endian
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # through np.load
        np.zeros((0, 5), dtype=np.float32),
        np.array(2.5),
    ],
)
def test_a_day_file_reads_as_np_load_reads_it(tmp_path, array):
    path = tmp_path / "day_000001.npy"
    np.save(path, array)
    got = dataset._load(path)
    expected = np.load(path)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    got[...] = 0  # writable, and not shared with a later read
    np.testing.assert_array_equal(dataset._load(path), expected)


def test_the_header_is_parsed_once_for_files_that_share_it(tmp_path):
    dataset._npy_header.cache_clear()
    for day in range(5):
        np.save(tmp_path / f"day_{day:06d}.npy", np.full((1, 4, 3), day, dtype=np.float32))
    values = [float(dataset._load(tmp_path / f"day_{day:06d}.npy")[0, 2, 1]) for day in range(5)]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert dataset._npy_header.cache_info().misses == 1


def test_broken_day_files_name_themselves(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((1, 4, 3), dtype=np.float32))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-5])
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    unreadable = "not a readable .npy array"
    for path, words in [(cut, unreadable), (text, unreadable), (tmp_path / "missing.npy", "file not found"),
                        (tmp_path, unreadable)]:  # fmt: skip
        with pytest.raises(InputError, match=words) as raised:
            dataset._load(path)
        assert str(path) in str(raised.value)
