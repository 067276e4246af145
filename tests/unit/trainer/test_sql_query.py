"""The pure parts of SQL sources: the canonical query and how a URL is named."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kubeloop.trainer import sql
from kubeloop.trainer.data import DataError


def test_the_query_is_wrapped_and_ordered_by_every_column():
    assert sql.canonical_query("SELECT a, b FROM t", 2) == (
        "SELECT * FROM (SELECT a, b FROM t\n) s ORDER BY 1, 2"
    )
    # a trailing semicolon goes; a trailing comment cannot swallow the closing parenthesis
    assert sql.canonical_query("SELECT a FROM t -- all of them\n ; ;\n", 1) == (
        "SELECT * FROM (SELECT a FROM t -- all of them\n) s ORDER BY 1"
    )
    assert sql.probe_query("SELECT a FROM t;") == "SELECT * FROM (SELECT a FROM t\n) s LIMIT 0"


@pytest.mark.parametrize(
    ("url", "shown", "password"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u@h:5432/db", True),
        (
            "postgres://u@h/db?password=pw&sslmode=require",
            "postgres://u@h/db?sslmode=require",
            True,
        ),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db", False),
        (
            "postgresql:///db?host=/run/postgresql",
            "postgresql:///db?host=%2Frun%2Fpostgresql",
            False,
        ),
    ],
)
def test_a_url_is_named_without_its_password(url, shown, password):
    assert sql.is_sql_url(url)
    assert sql.display(url) == shown
    assert sql.has_password(url) is password
    assert "pw" not in sql.display(url)


def test_files_are_not_sql_and_a_broken_url_is_not_echoed():
    for source in ("/data/x.csv", "s3://b/x.parquet", "postgresql.csv", "file:///postgres"):
        assert not sql.is_sql_url(source)
    with pytest.raises(DataError) as info:
        sql.display("postgresql://u:pw@h:notaport/db")
    assert "pw" not in str(info.value)


def test_copy_reads_only_types_whose_csv_text_parses_exactly():
    # bool, int8/int2/int4/oid, float4/float8/numeric, "char"/name/text/bpchar/varchar
    codes = [16, 20, 21, 23, 26, 700, 701, 1700, 18, 19, 25, 1042, 1043]
    assert (
        sql.copy_types(codes)
        == [pa.bool_()] + [pa.int64()] * 4 + [pa.float64()] * 3 + [pa.string()] * 5
    )
    # a date, a timestamp or bytea is formatted by Python: the cursor path reads the query
    for other in (1082, 1184, 17, 114):
        assert sql.copy_types([20, other]) is None
    assert sql.copy_statement("SELECT a, b FROM t;", 2) == (
        "COPY (SELECT * FROM (SELECT a, b FROM t\n) s ORDER BY 1, 2) "
        "TO STDOUT WITH (FORMAT csv, HEADER false)"
    )
