//! acme-api: the example component of the `acme-api` job. Serves on loopback:
//! `GET /health`, `GET /items`, `POST /items` (body: the item's name, or `{"name": ...}`).
//! monit starts and stops it through the job's `bin/ctl`, which writes its pidfile.

mod store;

use std::io::Read;
use std::path::PathBuf;

use clap::Parser;
use tiny_http::{Header, Method, Request, Response, Server};

use store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "acme-api",
    version,
    about = "A tiny HTTP API storing items in the acme database"
)]
struct Args {
    /// The database config (the same JSON as bbr-acme-db's: adapter sqlite or postgres).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Address to listen on; loopback only is the intent.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Write the process id here once serving.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
}

fn json(status: u16, body: serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let header =
        Header::from_bytes("Content-Type", "application/json").unwrap_or_else(|_| unreachable!());
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header)
}

fn item_name(body: &str) -> Option<String> {
    let body = body.trim();
    let name = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => v.get("name")?.as_str()?.to_string(),
        Err(_) => body.to_string(),
    };
    (!name.is_empty() && name.len() <= 1000).then_some(name)
}

fn handle(store: &mut Store, req: &mut Request) -> Response<std::io::Cursor<Vec<u8>>> {
    let route = (
        req.method().clone(),
        req.url().split('?').next().unwrap_or("").to_string(),
    );
    match (route.0, route.1.as_str()) {
        (Method::Get, "/health") => match store.ping() {
            Ok(()) => json(200, serde_json::json!({"status": "ok"})),
            Err(e) => json(
                503,
                serde_json::json!({"status": "unavailable", "error": e.to_string()}),
            ),
        },
        (Method::Get, "/items") => match store.list() {
            Ok(items) => json(200, serde_json::json!(items)),
            Err(e) => json(500, serde_json::json!({"error": e.to_string()})),
        },
        (Method::Post, "/items") => {
            let mut body = String::new();
            if req
                .as_reader()
                .take(64 * 1024)
                .read_to_string(&mut body)
                .is_err()
            {
                return json(400, serde_json::json!({"error": "the body is not UTF-8"}));
            }
            let Some(name) = item_name(&body) else {
                return json(
                    400,
                    serde_json::json!({"error": "give the item's name as the body or {\"name\": ...}"}),
                );
            };
            match store.add(&name) {
                Ok(id) => json(201, serde_json::json!({"id": id, "name": name})),
                Err(e) => json(500, serde_json::json!({"error": e.to_string()})),
            }
        }
        _ => json(404, serde_json::json!({"error": "not found"})),
    }
}

fn main() {
    let args = Args::parse();
    let config = match bbr_runner::actions::acme_db::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("acme-api: {e}");
            std::process::exit(2);
        }
    };
    let mut store = match Store::open(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("acme-api: cannot open the acme database: {e}");
            std::process::exit(1);
        }
    };
    let server = match Server::http(&args.listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("acme-api: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    if let Some(p) = &args.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("acme-api: cannot write the pidfile {}: {e}", p.display());
            std::process::exit(1);
        }
    }
    eprintln!(
        "acme-api: serving on http://{} ({} storage)",
        args.listen,
        config.adapter.name()
    );
    for mut req in server.incoming_requests() {
        let resp = handle(&mut store, &mut req);
        let _ = req.respond(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_names_from_text_or_json() {
        assert_eq!(item_name("widget\n").as_deref(), Some("widget"));
        assert_eq!(item_name(r#"{"name":"gadget"}"#).as_deref(), Some("gadget"));
        assert_eq!(item_name(""), None);
        assert_eq!(item_name(r#"{"other":1}"#), None);
    }
}
