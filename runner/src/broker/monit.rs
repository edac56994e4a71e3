//! monit, as the runner's root side reaches it: the HTTP interface and credentials declared in
//! monit's control file (root's, 0600 on a BOSH VM), and three requests about one service:
//! its status (`/_status?format=xml`), stop and start (`POST /SERVICE`, with monit's CSRF
//! token as cookie and form field, as its web UI sends them). Checked against monit 5.33.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

/// Where monit's HTTP interface listens and who may use it.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{} (password hidden)",
            self.user, self.address, self.port
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitError {
    #[error("{}: {message}", file.display())]
    ControlFile { file: PathBuf, message: String },
    #[error("monit at {endpoint}: {message}")]
    Http { endpoint: String, message: String },
}

fn control(file: &Path, message: impl Into<String>) -> MonitError {
    MonitError::ControlFile {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// The control file's words, without comments, quotes kept around a quoted word's text.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                break;
            }
            if let Some(q) = rest.strip_prefix('"') {
                let end = q.find('"').unwrap_or(q.len());
                out.push(q[..end].to_string());
                rest = q.get(end + 1..).unwrap_or("");
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// A `user:password` credential (not an address such as `::1` or `10.0.0.0/8`).
fn credential(word: &str) -> Option<(String, String)> {
    let (user, password) = word.split_once(':')?;
    let userish = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !user.chars().all(|c| c.is_ascii_hexdigit());
    (userish && !password.is_empty() && !word.contains('/'))
        .then(|| (user.to_string(), password.to_string()))
}

/// Reads `set httpd port N [and use address A] allow ...` from monit's control file: the first
/// credential that is not read-only, inline (`allow user:password`) or from a cleartext
/// htpasswd file (`allow cleartext FILE`, as BOSH's monitrc does).
pub fn endpoint(control_file: &Path) -> Result<Endpoint, MonitError> {
    let text = std::fs::read_to_string(control_file).map_err(|e| {
        control(
            control_file,
            format!("cannot read monit's control file: {e}"),
        )
    })?;
    let w = words(&text);
    let start = w
        .windows(2)
        .position(|p| p[0] == "set" && p[1] == "httpd")
        .ok_or_else(|| control(control_file, "no `set httpd` statement: monit's HTTP interface is off, so nothing can ask it to stop or start a service"))?;
    let end = w[start + 2..]
        .iter()
        .position(|x| matches!(x.as_str(), "set" | "check" | "include"))
        .map_or(w.len(), |i| start + 2 + i);
    let httpd = &w[start + 2..end];
    let after = |key: &str| {
        httpd
            .iter()
            .position(|x| x == key)
            .and_then(|i| httpd.get(i + 1))
    };
    let port = after("port")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| {
            control(
                control_file,
                "`set httpd` has no `port N` (a unix socket interface is not supported)",
            )
        })?;
    // A numeric address (or localhost): the runner never resolves a name it would then send
    // monit's credentials to.
    let address = match after("address").map(String::as_str) {
        None | Some("localhost") => std::net::IpAddr::from([127, 0, 0, 1]),
        Some(a) => a.parse().map_err(|_| {
            control(
                control_file,
                format!(
                    "`set httpd ... address {a}`: give a numeric address (127.0.0.1), not a name"
                ),
            )
        })?,
    };
    let mut i = 0;
    while i < httpd.len() {
        if httpd[i] == "allow" {
            let next = httpd.get(i + 1).map(String::as_str).unwrap_or("");
            let read_only = httpd.get(i + 2).is_some_and(|x| x == "read-only");
            if let Some((user, password)) = credential(next).filter(|_| !read_only) {
                return Ok(Endpoint {
                    address,
                    port,
                    user,
                    password,
                });
            }
            if next == "cleartext" {
                if let Some(file) = httpd.get(i + 2) {
                    if let Some((user, password)) = htpasswd(Path::new(file))? {
                        return Ok(Endpoint {
                            address,
                            port,
                            user,
                            password,
                        });
                    }
                }
            }
        }
        i += 1;
    }
    Err(control(
        control_file,
        "`set httpd` allows no user with a password the runner can use (`allow USER:PASSWORD`, or `allow cleartext FILE`, not read-only)",
    ))
}

fn htpasswd(file: &Path) -> Result<Option<(String, String)>, MonitError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| control(file, format!("cannot read monit's credentials: {e}")))?;
    Ok(text.lines().find_map(|l| {
        let (u, p) = l.trim().split_once(':')?;
        (!u.is_empty() && !p.is_empty()).then(|| (u.to_string(), p.to_string()))
    }))
}

/// What monit's status says of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStatus {
    /// monit's error bits (0: OK).
    pub status: u64,
    /// 0 not monitored, 1 monitored, 2 initializing, 4 waiting.
    pub monitor: u64,
    /// The pending action (0 none, 3 stop, 6 start...).
    pub pending: u64,
    pub pid: Option<i64>,
    /// A pid monit reported for the service during this run that still runs on the host, as
    /// the root side sees it: the action, in its own pid namespace, cannot look.
    pub alive: Option<i64>,
}

impl ServiceStatus {
    /// One line the broker sends to the action: `status=N monitor=N pending=N [pid=N]`.
    pub fn to_line(self) -> String {
        let mut s = format!(
            "status={} monitor={} pending={}",
            self.status, self.monitor, self.pending
        );
        if let Some(p) = self.pid {
            s.push_str(&format!(" pid={p}"));
        }
        if let Some(p) = self.alive {
            s.push_str(&format!(" alive={p}"));
        }
        s
    }

    pub fn from_line(line: &str) -> Option<ServiceStatus> {
        let mut s = ServiceStatus::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "status" => s.status = v.parse().ok()?,
                "monitor" => s.monitor = v.parse().ok()?,
                "pending" => s.pending = v.parse().ok()?,
                "pid" => s.pid = Some(v.parse().ok()?),
                "alive" => s.alive = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(s)
    }
}

fn tag(xml: &str, name: &str) -> Option<u64> {
    let open = format!("<{name}>");
    let at = xml.find(&open)? + open.len();
    let end = xml[at..].find('<')?;
    xml[at..at + end].trim().parse().ok()
}

/// The `<service>` element of `service` in monit's XML status.
pub fn parse_status(xml: &str, service: &str) -> Option<ServiceStatus> {
    let name = format!("<name>{service}</name>");
    xml.split("<service ").skip(1).find_map(|el| {
        let el = el.split("</service>").next()?;
        el.contains(&name).then(|| ServiceStatus {
            status: tag(el, "status").unwrap_or(0),
            monitor: tag(el, "monitor").unwrap_or(0),
            pending: tag(el, "pendingaction").unwrap_or(0),
            pid: tag(el, "pid").and_then(|p| i64::try_from(p).ok()),
            alive: None,
        })
    })
}

impl Endpoint {
    fn shown(&self) -> String {
        std::net::SocketAddr::from((self.address, self.port)).to_string()
    }

    fn http(&self, message: impl Into<String>) -> MonitError {
        MonitError::Http {
            endpoint: self.shown(),
            message: message.into(),
        }
    }

    fn auth(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        format!("Basic {token}")
    }

    /// One HTTP/1.0 exchange. Written by hand over a socket of our own, not with an HTTP client
    /// crate: the credentials are sent only after the kernel's socket table shows that the
    /// process that accepted this connection is root's (monit), not a vcap process that bound
    /// monit's port while monit was down.
    fn exchange(&self, head: &str, body: &str) -> Result<(u16, String), MonitError> {
        use std::io::{Read, Write};
        let to = Duration::from_secs(10);
        let addr = std::net::SocketAddr::from((self.address, self.port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, to)
            .map_err(|e| self.http(format!("cannot connect: {e}")))?;
        let _ = s.set_read_timeout(Some(to));
        let _ = s.set_write_timeout(Some(to));
        let (ours, theirs) = match (s.local_addr(), s.peer_addr()) {
            (Ok(o), Ok(t)) => (o, t),
            _ => return Err(self.http("cannot read the connection's addresses")),
        };
        match accepting_uid(theirs, ours) {
            Some(0) => {}
            Some(uid) => {
                return Err(self.http(format!(
                    "the process listening there is uid {uid}, not root: monit's credentials are not sent (is monit down and something else on its port?)"
                )))
            }
            None => {
                return Err(self.http(
                    "cannot tell from /proc/net/tcp who accepted the connection: monit's credentials are not sent",
                ))
            }
        }
        let request = format!(
            "{head}\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.shown(),
            self.auth(),
            body.len()
        );
        s.write_all(request.as_bytes())
            .map_err(|e| self.http(e.to_string()))?;
        let mut raw = Vec::new();
        s.take(16 << 20)
            .read_to_end(&mut raw)
            .map_err(|e| self.http(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = headers
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| self.http("not an HTTP answer"))?;
        Ok((code, body.to_string()))
    }

    pub fn status(&self, service: &str) -> Result<ServiceStatus, MonitError> {
        let (code, body) = self.exchange("GET /_status?format=xml HTTP/1.0", "")?;
        if code != 200 {
            return Err(self.http(format!("status: HTTP {code}: {}", plain(&body))));
        }
        parse_status(&body, service)
            .ok_or_else(|| self.http(format!("monit has no service named `{service}`")))
    }

    /// `action` is `stop` or `start`.
    pub fn act(&self, service: &str, action: &str) -> Result<(), MonitError> {
        let token = random_token();
        let (code, body) = self.exchange(
            &format!(
                "POST /{service} HTTP/1.0\r\nCookie: securitytoken={token}\r\nContent-Type: application/x-www-form-urlencoded"
            ),
            &format!("securitytoken={token}&action={action}"),
        )?;
        if (200..400).contains(&code) {
            return Ok(());
        }
        Err(self.http(format!("{action} {service}: HTTP {code}: {}", plain(&body))))
    }
}

/// The uid that owns the socket on the far side of our connection (`theirs` -> `ours`), from
/// the kernel's socket table: an accepted socket carries the uid of the listener's creator.
fn accepting_uid(theirs: std::net::SocketAddr, ours: std::net::SocketAddr) -> Option<u32> {
    let table = match theirs {
        std::net::SocketAddr::V4(_) => "/proc/net/tcp",
        std::net::SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (proc_addr(local)? == theirs && proc_addr(remote)? == ours).then(|| uid.parse().ok())?
    })
}

/// `0100007F:0B06` (/proc/net/tcp's hex, each 32-bit word in the host's byte order).
fn proc_addr(text: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()
                .map(u32::to_ne_bytes)
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            // A v4 peer on a v6 socket shows as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::from((ip, port)))
}

/// An HTML error page's text, short.
fn plain(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    out.chars().take(200).collect()
}

fn random_token() -> String {
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Endpoint, MonitError> {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("monitrc");
        std::fs::write(&f, text.replace("DIR", &d.path().display().to_string())).expect("w");
        std::fs::write(d.path().join("monit.user"), "vcap:s3cret\n").expect("w");
        endpoint(&f)
    }

    #[test]
    fn reads_inline_and_cleartext_file_credentials() {
        let e = parse("set daemon 1\nset httpd port 2822 and use address 127.0.0.1\n  allow admin:pw # comment\ncheck process x with pidfile /p\n").expect("inline");
        assert_eq!(
            (
                e.address.to_string().as_str(),
                e.port,
                e.user.as_str(),
                e.password.as_str()
            ),
            ("127.0.0.1", 2822, "admin", "pw")
        );
        // BOSH's monitrc.
        let e = parse("set httpd port 2822 and use address 127.0.0.1\n  allow cleartext DIR/monit.user\ninclude /var/vcap/monit/*.monitrc\n").expect("bosh");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("vcap", "s3cret"));
        let e =
            parse("set httpd port 99\n allow localhost\n allow ro:x read-only\n allow rw:p4ss\n")
                .expect("quoted");
        assert_eq!(
            (e.address.to_string().as_str(), e.user.as_str()),
            ("127.0.0.1", "rw")
        );
        let e = parse("set httpd port 1 and use address monit.example allow a:b\n")
            .expect_err("a name");
        assert!(e.to_string().contains("numeric address"), "{e}");
        assert!(
            !format!("{e:?}").contains("p4ss"),
            "the password is never printed"
        );
    }

    #[test]
    fn says_what_is_missing() {
        let e = parse("set daemon 1\n").expect_err("no httpd");
        assert!(e.to_string().contains("no `set httpd`"), "{e}");
        let e = parse("set httpd unixsocket /x\n allow a:b\n").expect_err("no port");
        assert!(e.to_string().contains("no `port N`"), "{e}");
        let e = parse("set httpd port 1 allow localhost allow ::1 allow a:b read-only\n")
            .expect_err("no credential");
        assert!(e.to_string().contains("allows no user"), "{e}");
    }

    #[test]
    fn reads_the_kernels_socket_table_addresses() {
        assert_eq!(
            proc_addr("0100007F:0B06"),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 2822)))
        );
        assert_eq!(
            proc_addr("0000000000000000FFFF00000100007F:0B06"),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 2822)))
        );
        assert_eq!(proc_addr("nonsense"), None);
    }

    #[test]
    fn a_connection_accepted_by_a_root_listener_is_roots() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let uid = accepting_uid(s.peer_addr().expect("peer"), s.local_addr().expect("local"));
        assert_eq!(uid, Some(nix::unistd::getuid().as_raw()));
    }

    #[test]
    fn finds_one_services_status_in_monits_xml() {
        let xml = "<monit><service type=\"3\"><name>other</name><status>0</status><monitor>1</monitor><pendingaction>0</pendingaction><pid>7</pid></service><service type=\"3\"><name>svc</name><status>512</status><status_hint>0</status_hint><monitor>0</monitor><pendingaction>6</pendingaction></service></monit>";
        let s = parse_status(xml, "svc").expect("svc");
        assert_eq!(
            s,
            ServiceStatus {
                status: 512,
                monitor: 0,
                pending: 6,
                pid: None,
                alive: None,
            }
        );
        assert_eq!(ServiceStatus::from_line(&s.to_line()), Some(s));
        let seen = ServiceStatus {
            pid: Some(7),
            alive: Some(7),
            ..s
        };
        assert_eq!(ServiceStatus::from_line(&seen.to_line()), Some(seen));
        assert_eq!(parse_status(xml, "other").and_then(|s| s.pid), Some(7));
        assert_eq!(parse_status(xml, "none"), None);
    }
}
