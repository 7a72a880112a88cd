//! Test fixtures shared by every crate's tests: a fresh Postgres database and
//! a fresh Redis key prefix per test, against the servers named by
//! `AGENTMESH_TEST_DATABASE_URL` and `AGENTMESH_TEST_REDIS_URL`.

pub mod proxy;

use crate::{Result, StateConfig, StateError};
use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The Postgres server tests use (its maintenance database).
pub fn database_url() -> String {
    std::env::var("AGENTMESH_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// The Redis server tests use.
pub fn redis_url() -> String {
    std::env::var("AGENTMESH_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into())
}

/// `host:port` of the test Postgres server, for a [`proxy::Proxy`] in front of it.
pub fn postgres_target() -> String {
    host_port(&database_url(), 5432)
}

/// `host:port` of the test Redis server.
pub fn redis_target() -> String {
    host_port(&redis_url(), 6379)
}

fn host_port(raw: &str, default_port: u16) -> String {
    match url::Url::parse(raw) {
        Ok(url) => format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(default_port)
        ),
        Err(_) => format!("127.0.0.1:{default_port}"),
    }
}

/// A Redis key prefix no other test uses.
pub fn fresh_redis_prefix() -> String {
    format!("agentmesh-test:{}:", uuid::Uuid::new_v4().simple())
}

/// Deletes every Redis key under `prefix` (best effort: errors are ignored).
pub async fn cleanup_redis(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = format!("{prefix}*");
    let keys: Vec<String> = match redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
    {
        Ok(keys) => keys,
        Err(_) => return,
    };
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A database created for one test. Call [`TestDb::cleanup`] at the end; if
/// it is dropped without that, `Drop` removes the database from a helper
/// thread (best effort).
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    pub name: String,
    admin_url: String,
    cleaned: bool,
}

/// Creates an empty database with a unique name on the test server.
///
/// Panics with the reason when the server cannot be used: tests need it, and
/// a loud failure says what to fix. [`try_fresh_postgres`] returns the error.
#[allow(clippy::panic)]
pub async fn fresh_postgres() -> TestDb {
    match try_fresh_postgres().await {
        Ok(db) => db,
        Err(e) => panic!("test postgres at {}: {e}", redacted(&database_url())),
    }
}

/// [`fresh_postgres`] without the panic.
pub async fn try_fresh_postgres() -> Result<TestDb> {
    let admin_url = database_url();
    let name = format!("agentmesh_test_{}", uuid::Uuid::new_v4().simple());
    let mut url = url::Url::parse(&admin_url)
        .map_err(|e| StateError::Invalid(format!("AGENTMESH_TEST_DATABASE_URL: {e}")))?;
    url.set_path(&format!("/{name}"));

    let mut conn = admin_connection(&admin_url).await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .map_err(|e| StateError::Internal(format!("create test database: {e}")))?;
    let _ = conn.close().await;
    Ok(TestDb {
        url: url.to_string(),
        name,
        admin_url,
        cleaned: false,
    })
}

/// The URL without its password, for messages.
fn redacted(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

async fn admin_connection(admin_url: &str) -> Result<PgConnection> {
    PgConnection::connect(admin_url)
        .await
        .map_err(|e| StateError::Unavailable {
            backend: "postgres",
            message: format!("test server: {e}"),
        })
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = admin_connection(admin_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .map_err(|e| StateError::Internal(format!("drop test database: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

impl TestDb {
    /// URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Postgres at this database plus Redis under a fresh prefix.
    pub fn state_config(&self) -> StateConfig {
        StateConfig {
            database_url: self.url.clone(),
            redis_url: Some(redis_url()),
            redis_prefix: fresh_redis_prefix(),
        }
    }

    /// Drops the database, closing any connection still open on it. A
    /// failure is reported on stderr: it must not hide the test's outcome.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        if let Err(e) = drop_database(&self.admin_url, &self.name).await {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let _ = runtime.block_on(drop_database(&admin_url, &name));
            }
        });
        let _ = worker.join();
    }
}

/// The statement the Postgres backend runs for a usage summary (parameters:
/// key id when `by_key`, then range start and end when `ranged`), so that a
/// test can check its plan.
pub fn postgres_usage_summary_sql(by_key: bool, ranged: bool) -> String {
    crate::pg::summary_sql(by_key, ranged)
}
