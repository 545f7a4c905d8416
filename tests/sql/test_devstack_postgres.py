"""devstack.postgres: the throwaway cluster the tests and the local stack run on."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from devstack.postgres import (
    BOOTSTRAP_SQL,
    Cluster,
    ClusterError,
    SchemaError,
    apply_schema,
    free_port,
    schema_files,
)


def test_the_session_cluster_is_detected_as_running(pg_cluster):
    assert Cluster.running(pg_cluster.datadir) == pg_cluster
    assert pg_cluster.is_running()


def test_starting_a_running_folder_returns_it_and_refuses_another_port(pg_cluster):
    assert Cluster.start(pg_cluster.datadir) == pg_cluster
    assert Cluster.start(pg_cluster.datadir, pg_cluster.port) == pg_cluster
    with pytest.raises(ClusterError, match="already runs"):
        Cluster.start(pg_cluster.datadir, free_port())


def test_a_folder_without_a_cluster_is_not_running(tmp_path):
    assert Cluster.running(tmp_path) is None


def test_the_cluster_listens_on_loopback_with_tuned_settings(pg_cluster):
    with pg_cluster.connect() as conn:
        settings = dict(conn.execute(
            "select name, setting from pg_settings where name in ('listen_addresses', 'fsync', 'synchronous_commit', 'full_page_writes', 'TimeZone', 'server_version_num')"
        ).fetchall())
        ctype = conn.execute("select lower('THIÈS')").fetchone()[0]
    assert settings["listen_addresses"] == "127.0.0.1"
    assert (settings["fsync"], settings["synchronous_commit"], settings["full_page_writes"]) == ("off", "off", "off")
    assert settings["TimeZone"] == "UTC"
    assert settings["server_version_num"].startswith("15")
    assert ctype == "thiès"  # a UTF-8 aware locale, so lower(city) matches accented cities


def test_the_template_refuses_connections_so_copies_never_wait(pg_cluster, pg_template):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_cluster.dsn(pg_template), connect_timeout=5).close()


def test_schema_files_run_bootstrap_then_migrations_by_name_then_the_seed():
    files = schema_files()
    assert files[0].name == "bootstrap.sql"
    assert files[-1].name == "seed.sql"
    migrations = [f.name for f in files[1:-1]]
    assert migrations == sorted(migrations) and len(migrations) >= 3
    assert schema_files(seed=False) == files[:-1]


def test_bootstrap_is_idempotent_and_the_schema_applies_without_the_seed(pg_cluster):
    # The roles already exist cluster-wide (the template made them); bootstrap runs twice.
    name = "schema_only"
    pg_cluster.create_database(name)
    try:
        apply_schema(pg_cluster.dsn(name), files=[BOOTSTRAP_SQL])
        apply_schema(pg_cluster.dsn(name), seed=False)
        with pg_cluster.connect(name) as conn:
            assert conn.execute("select count(*) from properties").fetchone()[0] == 0
    finally:
        pg_cluster.drop_database(name)


def test_a_failing_file_is_named_with_its_line(pg_cluster, tmp_path):
    broken = tmp_path / "broken.sql"
    broken.write_text("select 1;\n\nselect * from no_such_table;\n")
    name = "broken_schema"
    pg_cluster.create_database(name)
    try:
        with pytest.raises(SchemaError) as info:
            apply_schema(pg_cluster.dsn(name), files=[broken])
    finally:
        pg_cluster.drop_database(name)
    assert info.value.path == broken
    assert info.value.line == 3
    assert "no_such_table" in str(info.value)


def test_a_temporary_cluster_starts_and_stop_removes_everything():
    cluster = Cluster.start_temporary()
    datadir = cluster.datadir
    try:
        with cluster.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        cluster.stop(remove=True)
    assert not cluster.is_running()
    assert not Path(datadir).exists()
    with socket.socket() as s:  # nothing listens there any more
        assert s.connect_ex(("127.0.0.1", cluster.port)) != 0


def test_a_failed_start_says_why_and_leaves_nothing_behind():
    parent = Path(tempfile.mkdtemp(prefix="dousell-pg-test-"))
    parent.chmod(0o755)  # reachable by the postgres user when we are root
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            with pytest.raises(ClusterError, match="pg_ctl start failed"):
                Cluster.start_temporary(busy.getsockname()[1], parent=parent, timeout=15)
        assert list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent, ignore_errors=True)
