//! The subset of ERB the release's templates use, rendered as BOSH renders them (trim mode
//! `-`, `p("name")` from the manifest's properties, then the spec's defaults, else an error).
//! A test renders every template with this and with Ruby's ERB and compares the bytes.
//!
//! Supported: `<%= p("k") %>`, `<%= p("k").to_json %>`, and control lines
//! `<%- if COND -%>` / `<%- else -%>` / `<%- end -%>` where COND is `p("k")`,
//! `!p("k").empty?`, `p("k") == "text"` or `p("k") != "text"`.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErbError {
    #[error("Can't find property '[\"{0}\"]'")]
    MissingProperty(String),
    #[error("unsupported template code `{0}`: the release's templates use a small ERB subset")]
    Unsupported(String),
    #[error("unbalanced if/else/end")]
    Unbalanced,
}

/// Properties: the manifest's (nested objects), then the spec's defaults (by dotted name).
#[derive(Debug, Clone)]
pub struct Properties {
    pub manifest: Value,
    pub spec: Value,
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

/// `p("name")` at the start of `code`: the name and the rest.
fn property_call(code: &str) -> Option<(&str, &str)> {
    let rest = code.strip_prefix("p(\"")?;
    let end = rest.find("\")")?;
    Some((&rest[..end], &rest[end + 2..]))
}

fn expression(code: &str, props: &Properties) -> Result<String, ErbError> {
    let unsupported = || ErbError::Unsupported(code.to_string());
    let (name, rest) = property_call(code).ok_or_else(unsupported)?;
    let v = props.p(name)?;
    match rest.trim() {
        "" => Ok(to_s(&v)),
        ".to_json" => Ok(serde_json::to_string(&v).unwrap_or_default()),
        _ => Err(unsupported()),
    }
}

fn condition(code: &str, props: &Properties) -> Result<bool, ErbError> {
    let unsupported = || ErbError::Unsupported(code.to_string());
    if let Some(inner) = code.strip_prefix('!') {
        let (name, rest) = property_call(inner).ok_or_else(unsupported)?;
        return match rest.trim() {
            ".empty?" => Ok(!is_empty(&props.p(name)?)),
            _ => Err(unsupported()),
        };
    }
    let (name, rest) = property_call(code).ok_or_else(unsupported)?;
    let v = props.p(name)?;
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

/// Renders `template` with `props`.
pub fn render(template: &str, props: &Properties) -> Result<String, ErbError> {
    let mut out = String::new();
    // One flag per open `if`: whether its current branch is emitted.
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let emitting = |stack: &[(bool, bool)]| stack.iter().all(|(on, _)| *on);
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
                out.push_str(&expression(expr.trim(), props)?);
            }
            continue;
        }
        let code = body.trim();
        if let Some(cond) = code.strip_prefix("if ") {
            let parent_on = emitting(&stack);
            let value = if parent_on {
                condition(cond.trim(), props)?
            } else {
                false
            };
            stack.push((value, value));
        } else if code == "else" {
            let (on, taken) = stack.pop().ok_or(ErbError::Unbalanced)?;
            let _ = on;
            stack.push((!taken, true));
        } else if code == "end" {
            stack.pop().ok_or(ErbError::Unbalanced)?;
        } else {
            return Err(ErbError::Unsupported(code.to_string()));
        }
    }
    if !stack.is_empty() {
        return Err(ErbError::Unbalanced);
    }
    if emitting(&stack) {
        out.push_str(rest);
    }
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
}
