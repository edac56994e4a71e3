//! `${NAME}` variables: from `--var NAME=VALUE`, and from a fixed allow-list of the caller's
//! environment (the variables BBR itself sets). Nothing else of the environment is read.

use std::collections::BTreeMap;

/// Environment variables that may be used in a profile without `--var`: exactly those BBR sets.
pub const ENV_ALLOW_LIST: &[&str] = &[
    "BBR_ARTIFACT_DIRECTORY",
    "ARTIFACT_DIRECTORY",
    "BBR_AFTER_BACKUP_SCRIPTS_SUCCESSFUL",
    "BBR_VERSION",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<String, String>,
    /// Undefined variables expand to nothing instead of failing: only for reading what does not
    /// depend on them (limits, capabilities), as `bpm render` does.
    lenient: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error("`{0}` is not NAME=VALUE")]
    NotAssignment(String),
    #[error(
        "variable name `{0}` must be letters, digits and underscores, not starting with a digit"
    )]
    BadName(String),
    #[error("variable `${{{0}}}` is not defined: pass --var {0}=VALUE{hint}", hint = env_hint(.0))]
    Undefined(String),
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
}

fn env_hint(name: &str) -> &'static str {
    if ENV_ALLOW_LIST.contains(&name) {
        " or set it in the environment"
    } else {
        ""
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Vars {
    /// Variables from the allow-listed environment, then `--var` assignments (which win).
    pub fn from_env_and_args(
        env: impl IntoIterator<Item = (String, String)>,
        args: &[String],
    ) -> Result<Self, VarError> {
        let mut vars = Vars::default();
        for (name, value) in env {
            if ENV_ALLOW_LIST.contains(&name.as_str()) {
                vars.values.insert(name, value);
            }
        }
        for arg in args {
            let (name, value) = arg
                .split_once('=')
                .ok_or_else(|| VarError::NotAssignment(arg.clone()))?;
            if !valid_name(name) {
                return Err(VarError::BadName(name.to_string()));
            }
            vars.values.insert(name.to_string(), value.to_string());
        }
        Ok(vars)
    }

    /// Variables where an undefined one expands to nothing (see `lenient`).
    pub fn lenient() -> Self {
        Vars {
            values: BTreeMap::new(),
            lenient: true,
        }
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Replaces every `${NAME}` in `text`. `$$` is a literal `$`.
    pub fn expand(&self, text: &str) -> Result<String, VarError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body
                    .find('}')
                    .ok_or_else(|| VarError::Unterminated(text.to_string()))?;
                let name = &body[..end];
                if !valid_name(name) {
                    return Err(VarError::BadName(name.to_string()));
                }
                let value = match self.get(name) {
                    Some(v) => v,
                    None if self.lenient => "",
                    None => return Err(VarError::Undefined(name.to_string())),
                };
                out.push_str(value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(args: &[&str]) -> Vars {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Vars::from_env_and_args(Vec::new(), &args).expect("valid vars")
    }

    #[test]
    fn expands_defined_variables_and_dollar_escapes() {
        let v = vars(&["A=/x", "B_2=y"]);
        assert_eq!(
            v.expand("${A}/${B_2}/$$HOME/$").as_deref(),
            Ok("/x/y/$HOME/$")
        );
    }

    #[test]
    fn undefined_variable_is_an_error_naming_it() {
        let err = vars(&[])
            .expand("${BBR_ARTIFACT_DIRECTORY}/x")
            .expect_err("undefined");
        assert_eq!(err, VarError::Undefined("BBR_ARTIFACT_DIRECTORY".into()));
        assert!(err.to_string().contains("or set it in the environment"));
    }

    #[test]
    fn only_allow_listed_environment_is_read() {
        let env = vec![
            ("BBR_ARTIFACT_DIRECTORY".to_string(), "/a/".to_string()),
            ("PGPASSWORD".to_string(), "secret".to_string()),
        ];
        let v = Vars::from_env_and_args(env, &[]).expect("valid");
        assert_eq!(v.get("BBR_ARTIFACT_DIRECTORY"), Some("/a/"));
        assert_eq!(v.get("PGPASSWORD"), None);
    }

    #[test]
    fn bad_assignments_are_rejected() {
        assert!(matches!(
            Vars::from_env_and_args(Vec::new(), &["NOEQUALS".into()]),
            Err(VarError::NotAssignment(_))
        ));
        assert!(matches!(
            Vars::from_env_and_args(Vec::new(), &["1X=a".into()]),
            Err(VarError::BadName(_))
        ));
        assert_eq!(
            vars(&[]).expand("${A"),
            Err(VarError::Unterminated("${A".into()))
        );
    }
}
