//! The acme-api component: a tiny HTTP API on loopback storing items in the acme database.
//! `GET /health`, `GET /items`, `POST /items` (body: the item's name, or `{"name": ...}`).
//! Runs as `bbr-runner acme-api serve` (under `profiles/acme-api/serve.yml` on a VM) or as the
//! standalone `acme-api` binary.

use std::io::Read;
use std::path::Path;

use tiny_http::{Header, Method, Request, Response, Server};

use super::store::Store;

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

/// Serves until TERM, INT or HUP (monit's stop, through the runner), then ends between two
/// requests, so a stop never cuts a write in half: a SQLite transaction cut by a kill leaves a hot
/// journal, which a read-only reader (the backup) cannot roll back. Returns an exit code when it
/// cannot start.
pub fn serve(config: &Path, listen: &str, pidfile: Option<&Path>) -> i32 {
    let config = match crate::actions::acme_db::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            crate::note!("acme-api: {e}");
            return 2;
        }
    };
    let mut store = match Store::open(&config) {
        Ok(s) => s,
        Err(e) => {
            crate::note!("acme-api: cannot open the acme database: {e}");
            return 1;
        }
    };
    // Under a profile that declares the bind as HOST:PORT the runner has bound it (the action's
    // own network namespace could bind nothing reachable).
    let server = match crate::backend::native::inherited_listener(listen) {
        Some(l) => Server::from_listener(l, None),
        None => Server::http(listen),
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            crate::note!("acme-api: cannot listen on {}: {e}", listen);
            return 1;
        }
    };
    if let Some(p) = pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            crate::note!("acme-api: cannot write the pidfile {}: {e}", p.display());
            return 1;
        }
    }
    crate::note!(
        "acme-api: serving on http://{} ({} storage)",
        listen,
        config.adapter.name()
    );
    crate::actions::acme_db::tools::catch_stop_signals();
    loop {
        if let Some(sig) = crate::actions::acme_db::tools::interrupted() {
            crate::note!("acme-api: stopped by {sig}, between two requests");
            return 0;
        }
        match server.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(Some(mut req)) => {
                let resp = handle(&mut store, &mut req);
                let _ = req.respond(resp);
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::note!("acme-api: cannot accept a request: {e}");
                return 1;
            }
        }
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
