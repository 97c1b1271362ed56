"""Arrow arrays to and from numpy without pandas: the same values as pyarrow's own conversions, for every
shape a Parquet read hands back (several chunks, a slice, empty, nulls), and no pandas import on the way."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from qk_sniffer.core.arrow import numeric_array, numpy_values, schema, vector_array


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_numeric_array_equals_pyarrows_own(dtype):
    values = np.arange(-3, 7).astype(dtype)
    null = np.zeros(len(values), dtype=bool)
    null[[1, 8]] = True
    assert numeric_array(values).equals(pa.array(values))
    with_nulls = numeric_array(values, null=null)
    assert with_nulls.equals(pa.array(values, mask=null))
    assert with_nulls.null_count == 2
    assert numeric_array(values, null=np.zeros(len(values), dtype=bool)).null_count == 0


def test_numeric_array_of_a_strided_view_copies_it_in_order():
    values = np.arange(20, dtype=np.int64)[::3]
    assert numeric_array(values).to_pylist() == values.tolist()


def test_numpy_values_of_every_shape_a_read_returns():
    ints = pa.array(np.arange(10, dtype=np.int32))
    chunked = pa.chunked_array([ints.slice(0, 4), ints.slice(4)])
    cases = [ints, ints.slice(3, 5), chunked, pa.chunked_array([], type=pa.int64()), ints.slice(10)]
    for column in cases:
        got = numpy_values(column)
        assert got.dtype == column.type.to_pandas_dtype()
        assert got.tolist() == column.to_pylist()
    # A single chunk without nulls is a view of Arrow's memory (read-only), not a copy.
    assert not numpy_values(ints).flags.writeable
    # Nulls go through pyarrow's own conversion (floats with NaN where a value is missing).
    with_null = numpy_values(pa.array([1.0, None, 3.0], pa.float32()))
    assert np.isnan(with_null[1]) and with_null[[0, 2]].tolist() == [1.0, 3.0]


def test_vector_array_matches_the_schema_and_keeps_the_values():
    vectors = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    column = vector_array(vectors[:, ::-1])  # not contiguous: copied once, in order
    assert column.type == schema(4, token_strings=False).field("vector").type
    assert numpy_values(column.flatten()).reshape(5, 4).tolist() == vectors[:, ::-1].tolist()


def test_writing_and_reading_rows_imports_no_pandas(tmp_path):
    """pyarrow's ``pa.array`` and ``to_numpy`` import pandas (0.35 s); the helpers must not."""
    script = f"""
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from qk_sniffer.core.arrow import numeric_array, numpy_values, schema, vector_array
n = 6
table = pa.Table.from_arrays(
    [numeric_array(np.arange(n, dtype=np.int32)), numeric_array(np.arange(n, dtype=np.int64)),
     numeric_array(np.arange(n, dtype=np.int32)), vector_array(np.ones((n, 4), dtype=np.float32)),
     numeric_array(np.zeros(n, dtype=np.int32), null=np.ones(n, dtype=bool))],
    schema=schema(4, token_strings=False))
pq.write_table(table, {str(tmp_path / "part.parquet")!r})
read = pq.ParquetFile({str(tmp_path / "part.parquet")!r}).read()
assert numpy_values(read.column("position")).tolist() == list(range(n))
assert numpy_values(read.column("vector").chunk(0).values).sum() == 4 * n
print("pandas" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
