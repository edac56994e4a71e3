//! Where items live: the acme database, through the same config as the bbr-acme-db job.

use crate::actions::acme_db::{Adapter, Config};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Item {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Unsupported(String),
}

pub enum Store {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Sqlite(_) => "Store::Sqlite",
            Store::Postgres(_) => "Store::Postgres",
        })
    }
}

impl Store {
    pub fn open(config: &Config) -> Result<Store, StoreError> {
        match config.adapter {
            Adapter::Sqlite => {
                let path = config.sqlite_path.as_deref().ok_or_else(|| StoreError::Unsupported("no sqlite_path".into()))?;
                let conn = rusqlite::Connection::open(path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.execute_batch("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)")?;
                Ok(Store::Sqlite(conn))
            }
            Adapter::Postgres => {
                let server = config.server.as_ref().ok_or_else(|| StoreError::Unsupported("no server".into()))?;
                if server.tls.is_some() {
                    return Err(StoreError::Unsupported("acme-api does not speak TLS to PostgreSQL; remove `tls`".into()));
                }
                let mut client = postgres::Config::new()
                    .host(&server.host)
                    .port(server.port)
                    .user(&server.username)
                    .password(&server.password)
                    .dbname(&config.database)
                    .application_name("acme-api")
                    .connect(postgres::NoTls)?;
                client.batch_execute("CREATE TABLE IF NOT EXISTS items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)")?;
                Ok(Store::Postgres(Box::new(client)))
            }
            Adapter::Mysql => Err(StoreError::Unsupported("acme-api stores items in SQLite or PostgreSQL; adapter `mysql` is for bbr-acme-db only".into())),
        }
    }

    pub fn ping(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(c) => c.query_row("SELECT 1", [], |_| Ok(())).map_err(Into::into),
            Store::Postgres(c) => c.simple_query("SELECT 1").map(drop).map_err(Into::into),
        }
    }

    pub fn add(&mut self, name: &str) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(c) => {
                c.execute("INSERT INTO items (name) VALUES (?1)", [name])?;
                Ok(c.last_insert_rowid())
            }
            Store::Postgres(c) => Ok(c
                .query_one(
                    "INSERT INTO items (name) VALUES ($1) RETURNING id",
                    &[&name],
                )?
                .get(0)),
        }
    }

    pub fn list(&mut self) -> Result<Vec<Item>, StoreError> {
        match self {
            Store::Sqlite(c) => {
                let mut s = c.prepare("SELECT id, name FROM items ORDER BY id")?;
                let rows = s.query_map([], |r| {
                    Ok(Item {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Store::Postgres(c) => Ok(c
                .query("SELECT id, name FROM items ORDER BY id", &[])?
                .iter()
                .map(|r| Item {
                    id: r.get(0),
                    name: r.get(1),
                })
                .collect()),
        }
    }
}
