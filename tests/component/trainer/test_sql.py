"""`kubeloop snapshot` of a PostgreSQL query, against a real server (tests/postgres.py):
canonical row order, Parquet copies the trainer reads, the password kept off the command
line, and one-line reasons for every bad input that name the source but not the password."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from kubeloop.contracts.artifacts import ArtifactLayout
from kubeloop.contracts.results import SOURCE_URL_ENV
from kubeloop.trainer import sql
from kubeloop.trainer.sql import CHUNK_ROWS
from postgres import PASSWORD, PostgresServer

from .conftest import Result, run_kubeloop

FEATURES = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness"]
COLUMNS = ", ".join(f'"{c}" float8' for c in FEATURES) + ", target int, note text"
CANCER = "SELECT * FROM cancer_a"


def load(server: PostgresServer, table: str, frame: pd.DataFrame) -> None:
    """Create ``table`` and copy ``frame``'s rows into it, in the frame's order."""
    server.execute(f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} ({COLUMNS})")
    names = ", ".join(f'"{c}"' for c in frame.columns)
    with (
        psycopg.connect(server.url(password=True)) as conn,
        conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN".encode()) as copy,
    ):
        for row in frame.itertuples(index=False):
            copy.write_row([None if pd.isna(v) else v for v in row])


@pytest.fixture(scope="module")
def cancer(postgres: PostgresServer, data: Path) -> pd.DataFrame:
    """The cancer data with a text column, as cancer_a (file order) and cancer_b (reversed)."""
    frame = pd.read_csv(data / "cancer.csv")
    frame["note"] = ["seen twice" if i % 7 == 0 else None for i in range(len(frame))]
    load(postgres, "cancer_a", frame)
    load(postgres, "cancer_b", frame.iloc[::-1])
    postgres.execute("CREATE SEQUENCE IF NOT EXISTS tickets")
    return frame


@pytest.fixture
def sql_snapshot(tmp_path: Path, postgres: PostgresServer):
    """Run `kubeloop snapshot` of a query with the password from PGPASSWORD (or ``env``)."""
    runs = iter(range(1000))

    def run(query: str, *extra: str, env: dict[str, str] | None = None) -> Result:
        args = ["snapshot", "--query", query, "--out", str(tmp_path / "snaps"), *extra]
        if env is None:
            args[1:1] = ["--source", postgres.url()]
            env = {"PGPASSWORD": PASSWORD}
        return run_kubeloop(args, tmp_path / f"termination-{next(runs)}", env)

    return run


def digest_of(result: Result) -> str:
    assert result.code == 0, result.stderr
    return str(result.summary["digest"])


def test_sql_snapshot_is_parquet_with_a_digest_of_the_rows(sql_snapshot, cancer, postgres):
    first = sql_snapshot(CANCER)
    assert first.code == 0, first.stderr
    assert first.summary["rows"] == len(cancer)
    assert [c["name"] for c in first.summary["columns"]] == [*cancer.columns]
    stored = Path(first.summary["snapshot_uri"])
    assert stored.name == ArtifactLayout.data_file("parquet")
    assert (stored.parent / ArtifactLayout.PROFILE).is_file()
    copy = pd.read_parquet(stored)
    # the canonical order is the ORDER BY of every column: the rows sorted, nulls last
    expected = cancer.sort_values([*cancer.columns], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(copy, expected, check_dtype=False)

    # again, with the whole URL from the environment as the snapshot Job gives it
    again = sql_snapshot(CANCER, env={SOURCE_URL_ENV: postgres.url(password=True)})
    assert digest_of(again) == digest_of(first)
    # the same rows stored in the opposite order
    assert digest_of(sql_snapshot("SELECT * FROM cancer_b")) == digest_of(first)

    # one cell of one row changes
    biggest = 'SELECT max("mean radius") FROM cancer_b'
    postgres.execute(
        f'UPDATE cancer_b SET "mean area" = "mean area" + 1 WHERE "mean radius" = ({biggest})'
    )
    try:
        assert digest_of(sql_snapshot("SELECT * FROM cancer_b")) != digest_of(first)
    finally:
        load(postgres, "cancer_b", cancer.iloc[::-1])


def test_the_digest_is_that_of_the_same_rows_in_a_file(sql_snapshot, snapshot, cancer, tmp_path):
    numeric = cancer.drop(columns="note").sort_values([*FEATURES, "target"])
    numeric.to_csv(tmp_path / "sorted.csv", index=False)
    from_file = snapshot(tmp_path / "sorted.csv", "csv", tmp_path / "files")
    names = ", ".join(f'"{c}"' for c in FEATURES)
    query = f"SELECT {names}, target FROM cancer_a"
    assert digest_of(sql_snapshot(query)) == digest_of(from_file)


def test_query_text_reaches_the_server_as_written_in_chunks(sql_snapshot, postgres):
    rows = CHUNK_ROWS * 2 + 17
    postgres.execute(
        "DROP TABLE IF EXISTS words",
        "CREATE TABLE words AS SELECT n, 'w%:' || n AS word, n % 3 = 0 AS third, "
        "n::numeric / 4 AS quarter, DATE '2026-01-01' + n AS day, "
        "('k' || n % 3)::varchar(4) AS code, int4send(n) AS raw "
        f"FROM generate_series(1, {rows}) n",
    )
    query = "SELECT * FROM words WHERE word LIKE 'w%' AND word <> ':x' -- percent and colons\n;"
    result = sql_snapshot(query)
    assert result.code == 0, result.stderr
    assert result.summary["rows"] == rows
    types = {c["name"]: c["type"] for c in result.summary["columns"]}
    assert types == {
        "n": "integer",
        "word": "string",
        "third": "boolean",
        "quarter": "number",
        "day": "string",
        "code": "string",
        "raw": "string",
    }
    copy = pd.read_parquet(result.summary["snapshot_uri"])
    assert copy["n"].tolist() == list(range(1, rows + 1))
    assert copy.loc[0, "day"] == "2026-01-02"
    assert copy.loc[4, "quarter"] == 1.25
    assert copy.loc[4, "code"] == "k2"
    assert copy.loc[4, "raw"] == "00000005"  # bytea as hex


def test_the_trainer_trains_on_a_sql_snapshot(sql_snapshot, kubeloop, cancer, tmp_path):
    snap = sql_snapshot(CANCER)
    assert snap.code == 0, snap.stderr
    trained = kubeloop(
        "train",
        "--data",
        snap.summary["snapshot_uri"],
        "--target",
        "target",
        "--task",
        "classification",
        "--estimator",
        "LogisticRegression",
        "--features",
        ",".join(FEATURES),
        "--params",
        '{"max_iter": 500}',
        "--out",
        str(tmp_path / "model"),
    )
    assert trained.code == 0, trained.stderr
    assert trained.summary["metrics"]["accuracy"] > 0.8
    lineage = json.loads((tmp_path / "model" / ArtifactLayout.METADATA).read_text())["lineage"]
    assert lineage["data_digest"] == snap.summary["digest"]


def assert_one_line_without_password(result: Result, *secrets: str) -> str:
    """The failure's reason, after checking it is one line and shows no password."""
    assert result.summary["status"] == "failed"
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in (result.stdout, result.stderr, result.termination):
        for secret in secrets:
            assert secret not in text
    assert json.loads(result.termination)["reason"] == result.summary["reason"]
    return str(result.summary["reason"])


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kubeloop:{password}@127.0.0.1:{port}/kubeloop",
        "postgres://kubeloop@127.0.0.1:{port}/kubeloop?password={password}&sslmode=disable",
    ],
    ids=["user-part", "query-parameter"],
)
def test_a_password_on_the_command_line_is_refused(kubeloop, postgres, tmp_path, url):
    source = url.format(password=PASSWORD, port=postgres.port)
    out = tmp_path / "never"
    result = kubeloop("snapshot", "--source", source, "--query", "SELECT 1", "--out", str(out))
    assert result.code == 2
    reason = assert_one_line_without_password(result, PASSWORD)
    assert "refusing a password on the command line" in reason
    assert "PGPASSWORD" in reason
    assert f"127.0.0.1:{postgres.port}/kubeloop" in reason
    assert not out.exists()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def schema_file(tmp_path: Path, columns: list[dict[str, object]]) -> str:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"columns": columns}))
    return str(path)


BAD = [
    # (id, query, URL changes, schema columns, exit code, the cause the reason gives)
    ("wrong-password", CANCER, {"password": "not-it"}, None, 2,
     'password authentication failed for user "kubeloop"'),
    ("unreachable", CANCER, {"port": "closed"}, None, 1, "Connection refused"),
    ("unknown-database", CANCER, {"database": "nope"}, None, 2, 'database "nope" does not exist'),
    ("syntax-error", "SELEC * FROM cancer_a", {}, None, 2,
     "query failed: syntax error at or near"),
    ("missing-table", "SELECT * FROM no_such_table", {}, None, 2,
     'query failed: relation "no_such_table" does not exist'),
    ("schema-missing-column", CANCER, {}, [{"name": "size", "type": "number"}], 2,
     "column 'size': missing from the data"),
    ("schema-wrong-type", CANCER, {}, [{"name": "note", "type": "number", "nullable": True}], 2,
     "column 'note': expected number, found 'seen twice'"),
    ("no-rows", "SELECT * FROM cancer_a WHERE false", {}, None, 2, "the query returned no rows"),
    ("unorderable", "SELECT '{}'::json AS doc", {}, None, 2,
     "query failed: could not identify an ordering operator for type json"),
    ("writes-refused", "SELECT nextval('tickets') AS ticket", {}, None, 2,
     "query failed: cannot execute nextval() in a read-only transaction"),
    ("same-name-twice", "SELECT 1 AS a, 2 AS a", {}, None, 2,
     "the query returns the column name(s) a more than once"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "change", "columns", "code", "cause"), [pytest.param(*c[1:], id=c[0]) for c in BAD]
)
def test_bad_input_gives_one_line_naming_the_source_not_the_password(
    sql_snapshot, cancer, postgres, closed_port, tmp_path, query, change, columns, code, cause
):
    port = closed_port if change.get("port") == "closed" else postgres.port
    database = change.get("database", "kubeloop")
    password = change.get("password", PASSWORD)
    url = f"postgresql://kubeloop:{password}@127.0.0.1:{port}/{database}"
    extra = ("--schema", schema_file(tmp_path, columns)) if columns else ()
    result = sql_snapshot(query, *extra, env={SOURCE_URL_ENV: url})
    assert result.code == code, result.stderr
    reason = assert_one_line_without_password(result, PASSWORD, password)
    assert reason.startswith(f"postgresql://kubeloop@127.0.0.1:{port}/{database}: "), reason
    assert cause in reason
    assert not (tmp_path / "snaps").exists()


def test_flags_that_do_not_fit_a_sql_source(kubeloop, postgres, tmp_path):
    cases = {
        ("--source", postgres.url()): "a SQL source needs --query",
        ("--source", postgres.url(), "--query", "SELECT 1", "--format", "csv"): (
            "a SQL source is stored as parquet"
        ),
        ("--source", str(tmp_path / "x.csv"), "--query", "SELECT 1"): (
            "--query needs a postgresql:// --source"
        ),
    }
    for args, message in cases.items():
        result = kubeloop("snapshot", *args, "--out", str(tmp_path / "never"))
        assert result.code == 2, result.stderr
        assert message in result.stderr


EDGES = [  # (column, type, edge values as SQL literals; generated rows fill the rest)
    ("i", "int8", [  # int8 beyond ±2**53 fails the digest on both paths (a cast)
        "NULL", "-9007199254740992", "9007199254740992", "0"]),
    ("s", "int2", ["NULL", "-32768", "32767", "0"]),
    ("o", "oid", ["NULL", "4294967295", "0", "1"]),
    ("f4", "float4", ["'NaN'", "'Infinity'", "'-Infinity'", "0.1"]),
    ("f8", "float8", ["'NaN'", "'-0'", "1e-310", "NULL"]),
    ("num", "numeric", ["'NaN'", "'-Infinity'", "123456789.123456789123456789", "1e400"]),
    ("b", "bool", ["NULL", "true", "false", "true"]),
    ("t", "text", ["NULL", "''", "'a,\"b\"'", "E'line\\nbreak\\r\\n,'"]),
    ("v", "varchar(12)", ["''", "NULL", "E'\\\\N'", "'ünïcode'"]),
    ("c", "char(3)", ["'a'", "NULL", "' '", "'\"'"]),
]  # fmt: skip


def test_copy_and_cursor_paths_give_the_same_digest_and_profile(postgres, snapshot, tmp_path):
    """Edge values of every type the COPY path takes (NULL and '' apart, quotes, commas and
    line breaks in text, NaN and infinities, extreme integers), over several COPY blocks:
    the same Parquet values, digest and profile as the cursor path's."""
    columns = ", ".join(f"{name} {kind}" for name, kind, _ in EDGES)
    rows = [f"({', '.join(values[i] for _, _, values in EDGES)})" for i in range(4)]
    generated = (
        "n, n % 7 - 3, n, n / 3.0, n * 1.5, n::numeric / 7, n % 2 = 0, "
        "'row ' || n || CASE WHEN n % 5 = 0 THEN E',\\n\"x\"' ELSE '' END, "
        "CASE WHEN n % 3 = 0 THEN '' END, (n % 100)::text"
    )
    postgres.execute(
        "DROP TABLE IF EXISTS edges",
        f"CREATE TABLE edges ({columns})",
        f"INSERT INTO edges VALUES {', '.join(rows)}",
        f"INSERT INTO edges SELECT {generated} FROM generate_series(1, 60000) n",
    )
    with psycopg.connect(postgres.url(password=True)) as conn, conn.cursor() as cursor:
        cursor.execute(b"SELECT * FROM edges LIMIT 0")
        assert sql.copy_types([d.type_code for d in cursor.description or []]) is not None
    files = {}
    for path in ("copy", "cursor"):
        files[path] = tmp_path / f"{path}.parquet"
        read = sql.read_query(postgres.url(password=True), "SELECT * FROM edges", files[path],
                              use_copy=path == "copy")  # fmt: skip
        assert read == 60004
    copied, fetched = (pq.read_table(f) for f in files.values())
    assert copied.schema == fetched.schema
    assert pq.ParquetFile(files["copy"]).metadata.num_row_groups < 6  # blocks, not 10k chunks
    pd.testing.assert_frame_equal(copied.to_pandas(), fetched.to_pandas())
    results = [snapshot(f, "parquet", tmp_path / f"snaps-{p}") for p, f in files.items()]
    assert digest_of(results[0]) == digest_of(results[1])
    profiles = [Path(r.summary["snapshot_uri"]).parent / ArtifactLayout.PROFILE for r in results]
    assert profiles[0].read_bytes() == profiles[1].read_bytes()


def test_text_of_a_latin1_database_reads_the_same_on_both_paths(postgres, tmp_path):
    """The connection asks for UTF-8 (SQLAlchemy sets the client encoding), so the COPY
    bytes of a LATIN1 database are UTF-8 text for Arrow, as psycopg decodes them."""
    postgres.execute(
        "DROP DATABASE IF EXISTS latin",
        "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    postgres.execute(
        "CREATE TABLE names (n int, name text)",
        "INSERT INTO names VALUES (1, E'caf\\351'), (2, NULL), (3, '')",  # é in LATIN1
        database="latin",
    )
    url = postgres.url(password=True, database="latin")
    for use_copy in (True, False):
        out = tmp_path / f"names-{use_copy}.parquet"
        assert sql.read_query(url, "SELECT * FROM names", out, use_copy=use_copy) == 3
        assert pq.read_table(out).to_pylist() == [
            {"n": 1, "name": "café"},
            {"n": 2, "name": None},
            {"n": 3, "name": ""},
        ]
