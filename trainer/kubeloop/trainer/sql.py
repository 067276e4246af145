"""PostgreSQL sources: one query, read in chunks through a server-side cursor into Parquet.

The content digest hashes values in row order, and SQL promises no order, so
the query runs as ``SELECT * FROM (<query>) s ORDER BY 1, 2, ..., n`` (every
column, by position): the same rows then always come back in the same order
and give the same data version, however the table stores them. It runs in a
read-only transaction. Rows arrive ``CHUNK_ROWS`` at a time from a named
(server-side) cursor and are appended to a Parquet file, so reading holds one
chunk in memory, not the result.

Column types follow the result's PostgreSQL types: booleans, integers, floats
(``numeric`` as float64) keep their kind; every other type (text, dates,
timestamps, uuid, json, ...) becomes text in Python's ``str`` form (``bytea``
as hex). Credentials never appear in a message: the source is named by its URL
without the password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import pyarrow as pa
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


def read_query(source: str, query: str, out: Path) -> int:
    """Run ``query`` on the database at ``source`` in canonical row order and write the
    result to the Parquet file ``out``; the number of rows. A :class:`DataError` names the
    source (without its password) and the cause."""
    import psycopg

    url = _parse(source)
    name = display(source)
    with _connection(url, name) as conn:
        try:
            names, codes = _type_codes(conn, query)
            schema = _schema(names, codes, name)
            rows = _stream(conn, query, schema, codes, out)
        except psycopg.Error as error:
            raise _query_error(name, error, _password(url)) from None
    if rows == 0:
        raise DataError(f"{name}: the query returned no rows (the data set is empty)")
    return rows
