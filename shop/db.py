"""Engines for the shared database and schema lifecycle (create, drop, check against the contract)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Numeric, Select, Table, TextClause, UniqueConstraint, event, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, Inspector, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shop.schema import ExactKey, exact_key_collation, exact_key_ddl, metadata

# Writers on SQLite (edge, consumers, legacy emulator) share one file; wait instead of failing on a lock.
SQLITE_BUSY_TIMEOUT_MS = 5000


def _json_default(value: Any) -> Any:
    # Money inside JSON columns stays exact: Decimal goes out as its string, never a float.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # No implicit BEGIN from the driver (it also commits savepoints on its own):
    # _begin_by_first_statement starts every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run while one process writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_BEGIN_PENDING = "sqlite_begin_pending"
_WRITE_SQL = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _takes_write_lock(statement: Any) -> bool:
    """A write, or a locking read: SQLAlchemy drops FOR UPDATE on SQLite, which has no row locks."""
    if isinstance(statement, str | TextClause):
        return str(statement).lstrip().upper().startswith(_WRITE_SQL)
    if getattr(statement, "is_dml", False):
        return True
    return isinstance(statement, Select) and statement._for_update_arg is not None


def _begin_by_first_statement(engine: Engine) -> None:
    """Each transaction's BEGIN IMMEDIATE is sent with its first write or locking read.

    That statement (`SELECT … FOR UPDATE` is how every service function starts judging an order)
    takes the database's write lock, waiting busy_timeout for it, so the row it read "locked" cannot
    change under it, as on MariaDB. Plain reads before it run on their own, each seeing the last
    commit, as READ COMMITTED on MariaDB and as Python's sqlite3 did by default (a BEGIN before the
    first write only); a transaction that only reads takes no lock. Two alternatives failed on the
    demo stack: BEGIN IMMEDIATE for every transaction of a write engine queued every read behind the
    writers (p99 1–4 s on every route), and a deferred BEGIN before the first read made the later write
    fail at once with "database is locked" when another writer had committed since (SQLite cannot
    upgrade a stale snapshot; the busy timeout does not apply), 500s on the pay routes.
    """

    @event.listens_for(engine, "begin")
    def _pending(conn: Connection) -> None:
        conn.info[_BEGIN_PENDING] = True

    # before_cursor_execute, not before_execute: an autobegun transaction's "begin" comes between the two.
    @event.listens_for(engine, "before_cursor_execute")
    def _begin(conn: Connection, _cursor: Any, sql: str, _params: Any, context: Any, _many: bool) -> None:
        if not conn.info.get(_BEGIN_PENDING):
            return
        compiled = getattr(context, "compiled", None)
        if not _takes_write_lock(compiled.statement if compiled is not None else sql):
            return
        del conn.info[_BEGIN_PENDING]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("BEGIN IMMEDIATE")
        finally:
            cursor.close()

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _done(conn: Connection) -> None:
        # An invalidated connection (a statement cancelled mid-flight: a route's timeout) has no info to
        # clear, and asking for it raised PendingRollbackError in place of the cancellation.
        if not conn.invalidated:
            conn.info.pop(_BEGIN_PENDING, None)  # a transaction that only read sent no BEGIN: nothing to end


def _prepare_sqlite(url: URL) -> None:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


_ENDED = "shop_transaction_ended"  # connection info: committed, and no statement since
_CHECKED_IN = "shop_checked_in_at"  # connection info: time.monotonic() when it went back to the pool
PING_AFTER_IDLE_SECONDS = 1.0


def _skip_reset_after_commit(engine: Engine) -> None:
    """No ROLLBACK for a connection whose transaction just committed.

    SQLAlchemy's pool rolls back every connection it gets back, and after ``engine.begin()``
    committed that is one more round trip per transaction (two of a payment's twelve). The mark is
    set only once COMMIT succeeded and cleared by any statement after it, so a connection that
    failed, rolled back or went on reading is reset as before.
    """
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def info(dbapi_connection: Any) -> dict[Any, Any]:
        # A pooled connection carries info; the ad-hoc one of the dialect's first-connect setup has none.
        try:
            return dbapi_connection.info  # type: ignore[no-any-return]
        except (AttributeError, NotImplementedError):
            return {}

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        info(dbapi_connection)[_ENDED] = True

    def do_rollback(dbapi_connection: Any) -> None:
        if not info(dbapi_connection).pop(_ENDED, False):
            rollback(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    @event.listens_for(engine, "before_cursor_execute")
    def _open(conn: Connection, _cursor: Any, _sql: str, _params: Any, _context: Any, _many: bool) -> None:
        conn.info.pop(_ENDED, None)


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only when it sat in the pool longer than ``idle_seconds``.

    ``pool_pre_ping`` pings at every checkout: a round trip per transaction that, under load, checks
    a connection used milliseconds ago. What it guards against (a server restart, wait_timeout)
    leaves connections idle for longer than that; a dead one is invalidated here and the pool
    connects again (SQLAlchemy's documented pessimistic disconnect handling).
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _mark(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get(_CHECKED_IN, 0.0) <= idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # whatever the reason, a connection that cannot answer a ping is not used
            raise sa_exc.DisconnectionError("the pooled connection did not answer a ping") from exc


def make_engine(url: str, *, read_only: bool = False, ping_after_idle: float | None = PING_AFTER_IDLE_SECONDS,
                **kw: Any) -> AsyncEngine:
    """An AsyncEngine for SQLite (aiosqlite) or MySQL/MariaDB (aiomysql/asyncmy); ``kw`` overrides the defaults.

    ``read_only`` engines serve the hot read paths (pricing): on MySQL their connections are in
    autocommit mode, so a request's reads cost no BEGIN/ROLLBACK round trips and no pre-ping;
    a connection lost to a server restart is invalidated on first use and callers retry once.
    Never write through one: there is no transaction to roll back.

    Write engines on MySQL ping a pooled connection before use only after ``ping_after_idle``
    seconds in the pool (``None``: never; the caller retries failed transactions itself), and send
    no ROLLBACK for a connection whose transaction committed.
    """
    parsed = make_url(url)
    # hide_parameters: an error's text (logged) never carries the row's values: addresses, phones, PSP references.
    options: dict[str, Any] = {"json_serializer": _json_dumps, "hide_parameters": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite(parsed)
    elif backend in ("mysql", "mariadb"):
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        options.update(
            # MySQL drops idle connections (wait_timeout): recycled before that, and pinged after
            # idling (_ping_after_idle) rather than at every checkout.
            pool_pre_ping=False,
            pool_recycle=1800,
            pool_size=10,
            max_overflow=20,
            pool_timeout=10,
        )
        if read_only:
            options.update(pool_pre_ping=False, pool_reset_on_return=None, connect_args={"autocommit": True})
        else:
            # Writes are guarded compare-and-set updates; READ COMMITTED makes every re-read in a
            # transaction see what the other writer (old shopping) committed, so a lost CAS can be
            # judged again instead of retrying against a stale snapshot (docs/orders.md).
            options.update(isolation_level="READ COMMITTED")
    options.update(kw)
    engine = create_async_engine(parsed, **options)
    if read_only and backend in ("mysql", "mariadb"):
        # Autocommit connections have no transaction to end, yet SQLAlchemy still sends ROLLBACK
        # when a connection closes (a third of a price request's round trips): skip it here.
        engine.sync_engine.dialect.do_rollback = lambda dbapi_connection: None  # type: ignore[method-assign]
    elif backend in ("mysql", "mariadb"):
        _skip_reset_after_commit(engine.sync_engine)
        if ping_after_idle is not None and not options.get("pool_pre_ping"):
            _ping_after_idle(engine.sync_engine, ping_after_idle)
    if backend == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        _begin_by_first_statement(engine.sync_engine)
    return engine


def is_unavailable(exc: BaseException) -> bool:
    """A database failure that is about the database being unreachable or busy, not about the request:
    a lost or refused connection, a server restart, a full pool, a deadlock or lock wait given up on.
    Such a request changed nothing (its transaction is gone) and may be sent again."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in pool_timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return False


def is_deadlock(exc: BaseException) -> bool:
    """MySQL/MariaDB chose this transaction as a deadlock victim or gave up waiting for a row lock:
    it was rolled back whole, and running the same unit of work again is the documented answer."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    code = getattr(exc.orig, "args", [None])[0]
    return code in (1213, 1205)  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT


async def create_all(engine: AsyncEngine) -> None:
    """Create missing tables and their indexes; existing tables are left as they are."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def drop_all(engine: AsyncEngine) -> None:
    """Drop every table of the contract (only those; other tables in the database stay)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)


def _unique_keys(inspector: Inspector, table: str) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = set()
    pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
    if pk:
        keys.add(tuple(pk))
    for uc in inspector.get_unique_constraints(table):
        keys.add(tuple(uc["column_names"]))
    # MySQL reports unique keys as unique indexes too; SQLite may report either.
    for ix in inspector.get_indexes(table):
        if ix.get("unique"):
            keys.add(tuple(c for c in ix["column_names"] if c is not None))
    return keys


def _expected_unique_keys(table: Table) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = set()
    if table.primary_key.columns:
        keys.add(tuple(c.name for c in table.primary_key.columns))
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            keys.add(tuple(c.name for c in constraint.columns))
    for index in table.indexes:
        if index.unique:
            keys.add(tuple(c.name for c in index.columns))
    return keys


def _schema_problems(conn: Connection) -> list[str]:
    inspector = inspect(conn)
    existing = set(inspector.get_table_names())
    problems: list[str] = []
    for name, table in metadata.tables.items():
        if name not in existing:
            problems.append(f"missing table {name}")
            continue
        reflected = {col["name"]: col for col in inspector.get_columns(name)}
        for column in table.columns:
            found = reflected.get(column.name)
            if found is None:
                problems.append(f"missing column {name}.{column.name}")
                continue
            # A money column silently narrowed (or turned into FLOAT) would corrupt amounts.
            if isinstance(column.type, Numeric):
                want = (column.type.precision, column.type.scale)
                have = (getattr(found["type"], "precision", None), getattr(found["type"], "scale", None))
                if want != have:
                    problems.append(
                        f"column {name}.{column.name} is {found['type']}, expected NUMERIC{want}"
                    )
        problems.extend(_exact_key_problems(conn, table, set(reflected)))
        have_keys = _unique_keys(inspector, name)
        for key in sorted(_expected_unique_keys(table) - have_keys):
            problems.append(f"missing unique key {name}({', '.join(key)})")
    return problems


def _exact_key_problems(conn: Connection, table: Table, present: set[str]) -> list[str]:
    """Key columns (shop.schema.ExactKey) whose collation is not the byte-exact one, with the statement that fixes each."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return []  # SQLite compares text BINARY unless a column says otherwise, and create_all never does
    want = exact_key_collation(conn.dialect)
    problems: list[str] = []
    for column in table.columns:
        if not isinstance(column.type, ExactKey) or column.name not in present:
            continue
        have = conn.execute(text(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = :c"
        ), {"t": table.name, "c": column.name}).scalar()
        if have != want:
            null = "NULL" if column.nullable else "NOT NULL"
            problems.append(
                f"column {table.name}.{column.name} compares with {have}, expected {want} (keys compare byte for byte);"
                f" fix: ALTER TABLE {table.name} MODIFY {column.name} {exact_key_ddl(column.type, conn.dialect)} {null}"
            )
    return problems


async def check_schema(engine: AsyncEngine) -> list[str]:
    """Differences between the database and the contract's tables; an empty list means it matches."""
    async with engine.connect() as conn:
        return await conn.run_sync(_schema_problems)
