//! The subset of ERB the release's templates use, rendered as BOSH renders them (trim mode
//! `-`, `p("name")` from the manifest's properties, then the spec's defaults, else an error).
//! A test renders every template with this and with Ruby's ERB and compares the bytes.
//!
//! Supported: `<%= p("k") %>`, `<%= p("k").to_json %>`, and control lines
//! `<%- if COND -%>` / `<%- else -%>` / `<%- end -%>` where COND is `p("k")`,
//! `!p("k").empty?`, `p("k") == "text"` or `p("k") != "text"`; links as the director gives
//! them: `<%- if_link("name") do |l| -%>` / `<%- end.else do -%>` / `<%- end -%>`, with
//! `l.p("k")` wherever `p("k")` may stand.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErbError {
    #[error("Can't find property '[\"{0}\"]'")]
    MissingProperty(String),
    #[error("Can't find link property '[\"{0}\"]'")]
    MissingLinkProperty(String),
    #[error("unsupported template code `{0}`: the release's templates use a small ERB subset")]
    Unsupported(String),
    #[error("unbalanced if/else/end")]
    Unbalanced,
}

/// Properties: the manifest's (nested objects), then the spec's defaults (by dotted name);
/// and the links the job consumes (`{"name": {"instances": [...], "properties": {...}}}`, as
/// [`super::links`] resolves them).
#[derive(Debug, Clone)]
pub struct Properties {
    pub manifest: Value,
    pub spec: Value,
    pub links: Value,
}

/// A dotted name's value in nested objects; `null` counts as absent (as in bosh-template).
fn lookup<'a>(root: &'a Value, name: &str) -> Option<&'a Value> {
    name.split('.')
        .try_fold(root, |node, key| node.get(key))
        .filter(|v| !v.is_null())
}

impl Properties {
    pub fn p(&self, name: &str) -> Result<Value, ErbError> {
        let mut node = &self.manifest;
        let mut found = true;
        for key in name.split('.') {
            match node.get(key) {
                Some(n) => node = n,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            return Ok(node.clone());
        }
        self.spec
            .get("properties")
            .and_then(|p| p.get(name))
            .and_then(|d| d.get("default"))
            .cloned()
            .ok_or_else(|| ErbError::MissingProperty(name.to_string()))
    }
}

fn to_s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The links bound by the open `if_link` blocks: variable name and link properties.
type Bindings = [(String, Value)];

/// `p("name")` or `VAR.p("name")` at the start of `code`, looked up: the value and the rest.
fn property_call<'c>(
    code: &'c str,
    props: &Properties,
    bound: &Bindings,
) -> Option<Result<(Value, &'c str), ErbError>> {
    let (receiver, call) = match code.split_once(".p(\"") {
        Some((var, rest)) if !var.contains(['(', ' ', '"']) => (Some(var), rest),
        _ => (None, code.strip_prefix("p(\"")?),
    };
    let end = call.find("\")")?;
    let (name, rest) = (&call[..end], &call[end + 2..]);
    let value = match receiver {
        None => props.p(name),
        Some(var) => {
            let (_, link) = bound.iter().rev().find(|(v, _)| v == var)?;
            lookup(link, name)
                .cloned()
                .ok_or_else(|| ErbError::MissingLinkProperty(name.to_string()))
        }
    };
    Some(value.map(|v| (v, rest)))
}

fn expression(code: &str, props: &Properties, bound: &Bindings) -> Result<String, ErbError> {
    let unsupported = || ErbError::Unsupported(code.to_string());
    let (v, rest) = property_call(code, props, bound).ok_or_else(unsupported)??;
    match rest.trim() {
        "" => Ok(to_s(&v)),
        ".to_json" => Ok(serde_json::to_string(&v).unwrap_or_default()),
        _ => Err(unsupported()),
    }
}

fn condition(code: &str, props: &Properties, bound: &Bindings) -> Result<bool, ErbError> {
    let unsupported = || ErbError::Unsupported(code.to_string());
    if let Some(inner) = code.strip_prefix('!') {
        let (v, rest) = property_call(inner, props, bound).ok_or_else(unsupported)??;
        return match rest.trim() {
            ".empty?" => Ok(!is_empty(&v)),
            _ => Err(unsupported()),
        };
    }
    let (v, rest) = property_call(code, props, bound).ok_or_else(unsupported)??;
    let rest = rest.trim();
    let literal = |s: &str| -> Option<String> {
        s.trim()
            .strip_prefix('"')?
            .strip_suffix('"')
            .map(str::to_string)
    };
    if rest.is_empty() {
        Ok(truthy(&v))
    } else if let Some(lit) = rest.strip_prefix("==").and_then(literal) {
        Ok(to_s(&v) == lit && v.is_string())
    } else if let Some(lit) = rest.strip_prefix("!=").and_then(literal) {
        Ok(!(to_s(&v) == lit && v.is_string()))
    } else {
        Err(unsupported())
    }
}

/// One open `if` or `if_link` block.
struct Frame {
    /// Whether its current branch is emitted.
    on: bool,
    /// Whether a branch was taken already (`else` then emits nothing).
    taken: bool,
    /// `if_link`'s variable and the link's properties.
    bound: Option<(String, Value)>,
}

/// `if_link("name") do |var|`: the link's name and the variable.
fn if_link(code: &str) -> Option<(&str, &str)> {
    let rest = code.strip_prefix("if_link(\"")?;
    let (name, rest) = rest.split_once("\")")?;
    let var = rest.trim().strip_prefix("do |")?.strip_suffix('|')?;
    Some((name, var.trim()))
}

/// Renders `template` with `props`.
pub fn render(template: &str, props: &Properties) -> Result<String, ErbError> {
    let mut out = String::new();
    let mut stack: Vec<Frame> = Vec::new();
    let emitting = |stack: &[Frame]| stack.iter().all(|f| f.on);
    let bound = |stack: &[Frame]| -> Vec<(String, Value)> {
        stack.iter().filter_map(|f| f.bound.clone()).collect()
    };
    let mut rest = template;
    while let Some(start) = rest.find("<%") {
        let (text, tag) = rest.split_at(start);
        let trim_left = tag.starts_with("<%-");
        let mut text = text.to_string();
        if trim_left {
            // `<%-` drops the indentation before the tag on its line.
            let line_start = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            if text[line_start..].chars().all(|c| c == ' ' || c == '\t') {
                text.truncate(line_start);
            }
        }
        if emitting(&stack) {
            out.push_str(&text);
        }
        let body_start = if trim_left { 3 } else { 2 };
        let end = tag.find("%>").ok_or(ErbError::Unbalanced)?;
        let trim_right = tag[..end].ends_with('-');
        let body = &tag[body_start..if trim_right { end - 1 } else { end }];
        rest = &tag[end + 2..];
        if trim_right {
            rest = rest.strip_prefix('\n').unwrap_or(rest);
        }
        if let Some(expr) = body.strip_prefix('=') {
            if emitting(&stack) {
                out.push_str(&expression(expr.trim(), props, &bound(&stack))?);
            }
            continue;
        }
        let code = body.trim();
        if let Some((name, var)) = if_link(code) {
            // Present when the director gave it instances (bosh-template's rule).
            let link = props
                .links
                .get(name)
                .filter(|l| l.get("instances").is_some());
            let on = emitting(&stack) && link.is_some();
            let properties = link
                .and_then(|l| l.get("properties"))
                .cloned()
                .unwrap_or(Value::Null);
            stack.push(Frame {
                on,
                taken: link.is_some(),
                bound: Some((var.to_string(), properties)),
            });
        } else if let Some(cond) = code.strip_prefix("if ") {
            let value = emitting(&stack) && condition(cond.trim(), props, &bound(&stack))?;
            stack.push(Frame {
                on: value,
                taken: value,
                bound: None,
            });
        } else if code == "else" || code == "end.else do" {
            let f = stack.last_mut().ok_or(ErbError::Unbalanced)?;
            // An `if_link`'s variable is not bound in its else branch.
            (f.on, f.taken, f.bound) = (!f.taken, true, None);
        } else if code == "end" {
            stack.pop().ok_or(ErbError::Unbalanced)?;
        } else {
            return Err(ErbError::Unsupported(code.to_string()));
        }
    }
    if !stack.is_empty() {
        return Err(ErbError::Unbalanced);
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(manifest: Value) -> Properties {
        Properties {
            manifest,
            spec: json!({"properties": {"a": {"default": "x"}, "flag": {"default": false}, "list": {"default": []}}}),
            links: json!({}),
        }
    }

    #[test]
    fn subset_renders_like_erb() {
        let t = "v=<%= p(\"a\") %> j=<%= p(\"a\").to_json %>\n<%- if p(\"flag\") -%>\non\n<%- else -%>\noff\n<%- end -%>\n<%- if !p(\"list\").empty? -%>\nlist\n<%- end -%>\ndone\n";
        assert_eq!(
            render(t, &props(json!({}))).as_deref(),
            Ok("v=x j=\"x\"\noff\ndone\n")
        );
        assert_eq!(
            render(t, &props(json!({"flag": true, "list": [1]}))).as_deref(),
            Ok("v=x j=\"x\"\non\nlist\ndone\n")
        );
        assert_eq!(
            render("<%= p(\"nope\") %>", &props(json!({}))),
            Err(ErbError::MissingProperty("nope".into()))
        );
        assert!(matches!(
            render("<%= File.read(\"x\") %>", &props(json!({}))),
            Err(ErbError::Unsupported(_))
        ));
    }

    #[test]
    fn links_render_like_bosh_template() {
        let t = "<%- if_link(\"db\") do |l| -%>\nlink <%= l.p(\"a\") %>\n<%- if l.p(\"a\") != \"x\" -%>\nnot x\n<%- end -%>\n<%- end.else do -%>\nown <%= p(\"a\") %>\n<%- end -%>\n";
        let mut with = props(json!({}));
        assert_eq!(render(t, &with).as_deref(), Ok("own x\n"), "no link");
        with.links = json!({"db": {"properties": {"a": "y"}}});
        assert_eq!(
            render(t, &with).as_deref(),
            Ok("own x\n"),
            "a link without instances is absent"
        );
        with.links = json!({"db": {"instances": [], "properties": {"a": "y"}}});
        assert_eq!(render(t, &with).as_deref(), Ok("link y\nnot x\n"));
        assert_eq!(
            render(
                "<%- if_link(\"db\") do |l| -%><%= l.p(\"b\") %><%- end -%>",
                &with
            ),
            Err(ErbError::MissingLinkProperty("b".into()))
        );
        assert!(
            render(
                "<%- if_link(\"db\") do |l| -%><%- end.else do -%><%= l.p(\"a\") %><%- end -%>",
                &with
            )
            .is_ok(),
            "the else branch is not rendered when the link is there"
        );
        with.links = json!({});
        assert!(
            matches!(
                render(
                    "<%- if_link(\"db\") do |l| -%><%- end.else do -%><%= l.p(\"a\") %><%- end -%>",
                    &with
                ),
                Err(ErbError::Unsupported(_))
            ),
            "the variable is not bound in the else branch"
        );
    }
}
