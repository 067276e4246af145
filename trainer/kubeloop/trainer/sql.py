"""PostgreSQL sources: one query, streamed by ``COPY ... TO STDOUT`` (CSV) into Parquet.

The content digest hashes values in row order, and SQL promises no order, so
the query runs as ``SELECT * FROM (<query>) s ORDER BY 1, 2, ..., n`` (every
column, by position): the same rows then always come back in the same order
and give the same data version, however the table stores them. It runs in a
read-only transaction. Its rows stream out as ``COPY (...) TO STDOUT`` in CSV,
which Arrow's CSV reader parses block by block (``COPY_BLOCK`` bytes) with the
column types fixed from the result's description, and are appended to a Parquet
file: reading holds one block in memory, not the result, and no row becomes
Python objects. Only types whose CSV text Arrow parses to exactly what psycopg
would give take that path; a result with any other column (dates, timestamps,
json, ...) is read as before, ``CHUNK_ROWS`` rows at a time from a named
(server-side) cursor, and so is a result Arrow refuses to parse, from scratch.
Both give the same Parquet values, hence the same digest and profile.

Column types follow the result's PostgreSQL types: booleans, integers, floats
(``numeric`` as float64) keep their kind; every other type (text, dates,
timestamps, uuid, json, ...) becomes text in Python's ``str`` form (``bytea``
as hex). Credentials never appear in a message: the source is named by its URL
without the password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kubeloop.trainer.data import DataError

if TYPE_CHECKING:  # the drivers load when a database is read, not with every snapshot
    import psycopg
    from sqlalchemy import Connection, exc
    from sqlalchemy.engine import URL

#: The format a SQL snapshot is stored in.
FORMAT: Final = "parquet"
#: URL schemes of a PostgreSQL source.
SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
#: Rows fetched from the server-side cursor at a time.
CHUNK_ROWS = 10_000
#: Bytes of COPY output Arrow parses at a time.
COPY_BLOCK = 1 << 20
#: Seconds to wait for the server to answer a connection.
CONNECT_TIMEOUT_S = 15
#: Longest cause kept in a reason (the termination message has 4 KiB in all).
MAX_CAUSE = 600

_BOOL = {16}
_INTEGER = {20, 21, 23, 26}  # int8, int2, int4, oid
_NUMERIC = 1700
_FLOAT = {700, 701, _NUMERIC}  # float4, float8, numeric
_TEXT = {18, 19, 25, 1042, 1043}  # char, name, text, bpchar, varchar: psycopg gives str


class SourceUnavailable(DataError):  # noqa: N818 - a DataError like its siblings
    """The database did not answer: a later try may succeed."""


def is_sql_url(source: str) -> bool:
    """Whether ``source`` names a PostgreSQL database rather than a file."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def _parse(source: str) -> URL:
    from sqlalchemy import exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(source)
    except (exc.ArgumentError, ValueError):
        # the URL itself may hold a password: say only what is wrong
        raise DataError("the PostgreSQL URL cannot be parsed") from None


def _password(url: URL) -> str | None:
    """The password in the URL: its user part or a ``password`` query parameter (libpq's)."""
    given = url.password or url.query.get("password")
    if not given:
        return None
    return given if isinstance(given, str) else ",".join(given)


def has_password(source: str) -> bool:
    """Whether the URL carries a password."""
    return _password(_parse(source)) is not None


def display(source: str) -> str:
    """The URL without its password: how messages name the source."""
    from sqlalchemy.engine import URL

    url = _parse(source)
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database)
    query = {k: v for k, v in url.query.items() if k != "password"}
    return bare.update_query_dict(query).render_as_string(hide_password=False)


def _body(query: str) -> str:
    """The query as a subquery: trailing semicolons dropped, a line break before the ``)``
    so that a trailing ``--`` comment cannot swallow it."""
    return query.strip().rstrip("; \t\r\n")


def probe_query(query: str) -> str:
    """The statement that finds the result's columns without fetching a row."""
    return f"SELECT * FROM ({_body(query)}\n) s LIMIT 0"


def canonical_query(query: str, columns: int) -> str:
    """``query`` with every one of its ``columns`` in the ORDER BY: a canonical row order."""
    order = ", ".join(str(i) for i in range(1, columns + 1))
    return f"SELECT * FROM ({_body(query)}\n) s ORDER BY {order}"


def _cause(error: BaseException, password: str | None, first_line: bool) -> str:
    """The driver's message on one line, bounded, with no trace of the password."""
    orig = getattr(error, "orig", None) or error
    diag = getattr(orig, "diag", None)
    message = (getattr(diag, "message_primary", None) if first_line else None) or str(orig)
    if first_line:
        message = message.splitlines()[0] if message.strip() else type(orig).__name__
    if password:
        message = message.replace(password, "***")
    message = " ".join(message.split())
    return message if len(message) <= MAX_CAUSE else message[: MAX_CAUSE - 4] + " ..."


def _connect_error(name: str, error: exc.DBAPIError, password: str | None) -> DataError:
    """A refusal by the server (bad password, no such database) is bad input; no answer at
    all (refused, timed out) may pass, so it is worth a retry."""
    cause = _cause(error, password, first_line=False)
    if "FATAL:" in cause:
        return DataError(f"{name}: cannot connect: {cause}")
    return SourceUnavailable(f"{name}: cannot connect: {cause}")


def _query_error(name: str, error: psycopg.Error, password: str | None) -> DataError:
    """What the server said about the query (bad input), or that the connection went."""
    if error.sqlstate is None or error.sqlstate.startswith("08"):  # connection exception
        cause = _cause(error, password, first_line=False)
        return SourceUnavailable(f"{name}: connection lost: {cause}")
    return DataError(f"{name}: query failed: {_cause(error, password, first_line=True)}")


@contextmanager
def _connection(url: URL, name: str) -> Iterator[Connection]:
    """A read-only connection through psycopg 3, errors turned into reasons."""
    from sqlalchemy import create_engine, exc
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    try:
        try:
            conn = engine.connect()
        except exc.DBAPIError as error:
            raise _connect_error(name, error, _password(url)) from None
        with conn:
            yield conn.execution_options(postgresql_readonly=True)
    finally:
        engine.dispose()


def _converter(type_code: int) -> tuple[pa.DataType, Callable[[Any], Any] | None]:
    """The Arrow type of a PostgreSQL type and how one value becomes it (None: psycopg's
    value already is one, so Arrow takes the column as it is)."""
    if type_code in _BOOL:
        return pa.bool_(), None
    if type_code in _INTEGER:
        return pa.int64(), None
    if type_code in _FLOAT:
        return pa.float64(), float if type_code == _NUMERIC else None
    return pa.string(), None if type_code in _TEXT else _text


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _schema(names: Sequence[str], type_codes: Sequence[int], name: str) -> pa.Schema:
    if not names:
        raise DataError(f"{name}: the query returns no columns")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise DataError(
            f"{name}: the query returns the column name(s) {', '.join(duplicates)} more than "
            "once; give each column its own name (AS ...)"
        )
    return pa.schema(
        [pa.field(n, _converter(t)[0]) for n, t in zip(names, type_codes, strict=True)]
    )


def _batch(rows: Sequence[Sequence[Any]], schema: pa.Schema, type_codes: Sequence[int]) -> pa.Table:
    """One chunk of rows as an Arrow table (NULL stays missing)."""
    columns = []
    for i, code in enumerate(type_codes):
        _, convert = _converter(code)
        if convert is None:
            values = [row[i] for row in rows]
        else:
            values = [None if row[i] is None else convert(row[i]) for row in rows]
        columns.append(pa.array(values, type=schema.field(i).type))
    return pa.Table.from_arrays(columns, schema=schema)


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's: statements go to the server as written
    (no ``%`` or ``:name`` placeholders), and a named cursor is a server-side one."""
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


def _type_codes(conn: Connection, query: str) -> tuple[list[str], list[int]]:
    """The result's column names and PostgreSQL type OIDs (no row is fetched)."""
    with _driver(conn).cursor() as cursor:
        cursor.execute(probe_query(query).encode())
        description = cursor.description or []
    return [d.name for d in description], [d.type_code for d in description]


def _stream(conn: Connection, query: str, schema: pa.Schema, codes: list[int], out: Path) -> int:
    """Write the ordered result to ``out`` chunk by chunk; the number of rows."""
    rows = 0
    statement = canonical_query(query, len(codes)).encode()
    with (
        _driver(conn).cursor(name="kubeloop_snapshot") as cursor,
        pq.ParquetWriter(str(out), schema) as writer,
    ):
        cursor.itersize = CHUNK_ROWS
        cursor.execute(statement)
        while part := cursor.fetchmany(CHUNK_ROWS):
            writer.write_table(_batch(part, schema, codes))
            rows += len(part)
    return rows


def copy_types(type_codes: Sequence[int]) -> list[pa.DataType] | None:
    """The Arrow types the COPY path parses the result's columns into, or None when a
    column's CSV text would not parse to the value the cursor path stores (``numeric`` is
    parsed as float64 straight from its text, as ``float(Decimal)`` rounds it; booleans
    are ``t``/``f``; text is as psycopg decodes it). Anything else (dates, timestamps,
    ``bytea``, json, ...) is formatted by Python on the cursor path, so it stays there."""
    mappable = _BOOL | _INTEGER | _FLOAT | _TEXT
    if not all(code in mappable for code in type_codes):
        return None
    return [_converter(code)[0] for code in type_codes]


def copy_statement(query: str, columns: int) -> str:
    """The canonical query as CSV on the wire: NULL unquoted and empty, ``''`` as ``""``."""
    return f"COPY ({canonical_query(query, columns)}) TO STDOUT WITH (FORMAT csv, HEADER false)"


def csv_options(
    schema: pa.Schema,
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """How Arrow reads PostgreSQL's CSV: the columns named and typed (nothing inferred),
    quoted newlines allowed, an unquoted empty field NULL but a quoted one an empty text."""
    return (
        pacsv.ReadOptions(column_names=schema.names, block_size=COPY_BLOCK),
        pacsv.ParseOptions(newlines_in_values=True),
        pacsv.ConvertOptions(
            column_types=schema,
            null_values=[""],
            true_values=["t"],
            false_values=["f"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


@dataclass
class _CopyFile:
    """The COPY stream as a file Arrow reads: each read gathers rows (one CopyData message
    each) until it has the bytes asked for, so at most one block is held."""

    copy: psycopg.Copy
    rest: bytes = b""
    closed: bool = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data, read = bytearray(self.rest), self.copy.read
        while size < 0 or len(data) < size:
            row = read()
            if not row:
                break
            data += row
        cut = len(data) if size < 0 else size
        self.rest = bytes(data[cut:])
        return bytes(data[:cut])

    def close(self) -> None:
        self.closed = True


class _UnparsableError(Exception):
    """Arrow refused a value of the COPY output: the cursor path reads the query instead."""


def _copy_stream(conn: Connection, query: str, schema: pa.Schema, out: Path) -> int:
    """Write the ordered result to ``out`` block by block from COPY; the number of rows."""
    rows = 0
    statement = copy_statement(query, len(schema)).encode()
    read, parse, convert = csv_options(schema)
    with (
        _driver(conn).cursor() as cursor,
        cursor.copy(statement) as copy,
        pq.ParquetWriter(str(out), schema) as writer,
    ):
        try:
            reader = pacsv.open_csv(_CopyFile(copy), read, parse, convert)
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        except pa.ArrowInvalid as error:
            raise _UnparsableError(str(error)) from error
    return rows


def _read(conn: Connection, query: str, name: str, out: Path, use_copy: bool) -> int:
    """The rows of ``query`` written to ``out``: by COPY when every column maps exactly
    and ``use_copy``, else through the server-side cursor."""
    names, codes = _type_codes(conn, query)
    schema = _schema(names, codes, name)
    if use_copy and copy_types(codes) is not None:
        return _copy_stream(conn, query, schema, out)
    return _stream(conn, query, schema, codes, out)


def read_query(source: str, query: str, out: Path, use_copy: bool = True) -> int:
    """Run ``query`` on the database at ``source`` in canonical row order and write the
    result to the Parquet file ``out``; the number of rows. A :class:`DataError` names the
    source (without its password) and the cause. ``use_copy=False`` forces the cursor path
    (the tests compare the two)."""
    import psycopg

    url = _parse(source)
    name = display(source)
    rows = None
    while rows is None:
        with _connection(url, name) as conn:
            try:
                rows = _read(conn, query, name, out, use_copy)
            except psycopg.Error as error:
                raise _query_error(name, error, _password(url)) from None
            except _UnparsableError:
                use_copy = False  # the cursor path, on a fresh connection
    if rows == 0:
        raise DataError(f"{name}: the query returned no rows (the data set is empty)")
    return rows
