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
    pub address: String,
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
    let address = after("address")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".to_string());
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
        })
    })
}

impl Endpoint {
    fn shown(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    fn http(&self, message: impl Into<String>) -> MonitError {
        MonitError::Http {
            endpoint: self.shown(),
            message: message.into(),
        }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn auth(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        format!("Basic {token}")
    }

    pub fn status(&self, service: &str) -> Result<ServiceStatus, MonitError> {
        let url = format!("http://{}/_status?format=xml", self.shown());
        let mut resp = self
            .agent()
            .get(&url)
            .header("Authorization", self.auth())
            .call()
            .map_err(|e| self.http(e.to_string()))?;
        let code = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.http(e.to_string()))?;
        if code != 200 {
            return Err(self.http(format!("status: HTTP {code}: {}", plain(&body))));
        }
        parse_status(&body, service)
            .ok_or_else(|| self.http(format!("monit has no service named `{service}`")))
    }

    /// `action` is `stop` or `start`.
    pub fn act(&self, service: &str, action: &str) -> Result<(), MonitError> {
        let token = random_token();
        let url = format!("http://{}/{service}", self.shown());
        let mut resp = self
            .agent()
            .post(&url)
            .header("Authorization", self.auth())
            .header("Cookie", format!("securitytoken={token}"))
            .content_type("application/x-www-form-urlencoded")
            .send(format!("securitytoken={token}&action={action}"))
            .map_err(|e| self.http(e.to_string()))?;
        let code = resp.status().as_u16();
        if (200..400).contains(&code) {
            return Ok(());
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Err(self.http(format!("{action} {service}: HTTP {code}: {}", plain(&body))))
    }
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
                e.address.as_str(),
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
        assert_eq!((e.address.as_str(), e.user.as_str()), ("127.0.0.1", "rw"));
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
    fn finds_one_services_status_in_monits_xml() {
        let xml = "<monit><service type=\"3\"><name>other</name><status>0</status><monitor>1</monitor><pendingaction>0</pendingaction><pid>7</pid></service><service type=\"3\"><name>svc</name><status>512</status><status_hint>0</status_hint><monitor>0</monitor><pendingaction>6</pendingaction></service></monit>";
        let s = parse_status(xml, "svc").expect("svc");
        assert_eq!(
            s,
            ServiceStatus {
                status: 512,
                monitor: 0,
                pending: 6,
                pid: None
            }
        );
        assert_eq!(ServiceStatus::from_line(&s.to_line()), Some(s));
        assert_eq!(parse_status(xml, "other").and_then(|s| s.pid), Some(7));
        assert_eq!(parse_status(xml, "none"), None);
    }
}
