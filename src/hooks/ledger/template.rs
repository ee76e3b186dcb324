//! ACL topic filters with `%u` (user name) and `%c` (client id) placeholders.

use crate::hooks::Client;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Username,
    ClientId,
}

/// A topic filter that may name the client: `devices/%c/#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilterTemplate {
    parts: Vec<Part>,
    /// The filter itself when it has no placeholders (`%%` already undone).
    fixed: Option<String>,
}

impl FilterTemplate {
    /// Parses a rule's filter: `%u` and `%c` are placeholders, `%%` is a
    /// literal `%`, any other `%` is refused. The filter must be a valid
    /// topic filter (with the placeholders filled in) and not a
    /// `$share/...` filter.
    pub(crate) fn parse(filter: &str) -> Result<FilterTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = filter.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let part = match chars.next() {
                Some('%') => {
                    literal.push('%');
                    continue;
                }
                Some('u') => Part::Username,
                Some('c') => Part::ClientId,
                other => {
                    let seq = other.map(|o| format!("%{o}")).unwrap_or_else(|| "%".into());
                    return Err(format!(
                        "`{seq}` in `{filter}`: the placeholders are %u (user name) and %c (client id); write %% for a literal %"
                    ));
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = FilterTemplate { fixed: None, parts };
        let sample = template.fill("x", "x");
        if !crate::topic::valid_filter(&sample) {
            return Err(format!("`{filter}` is not a valid topic filter"));
        }
        if sample.starts_with("$share/") {
            return Err(format!(
                "`{filter}`: rules name plain filters; a shared subscription is judged by the filter after `$share/{{group}}/`"
            ));
        }
        let has_placeholders = template
            .parts
            .iter()
            .any(|p| !matches!(p, Part::Literal(_)));
        Ok(FilterTemplate {
            fixed: (!has_placeholders).then_some(sample),
            ..template
        })
    }

    fn fill(&self, username: &str, client_id: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            out.push_str(match p {
                Part::Literal(l) => l,
                Part::Username => username,
                Part::ClientId => client_id,
            });
        }
        out
    }

    /// The filter for `client`. `None` when a placeholder cannot be
    /// filled safely: the client has no user name (for `%u`), or the value
    /// is empty, starts with `$`, or contains `+`, `#`, `/` or U+0000, any
    /// of which would let a client widen the rule (a user named `+` must
    /// not get `devices/+/#`). Such a rule does not apply to that client.
    pub(crate) fn expand(&self, client: &Client) -> Option<Cow<'_, str>> {
        if let Some(fixed) = &self.fixed {
            return Some(Cow::Borrowed(fixed));
        }
        let mut username = "";
        if self.parts.contains(&Part::Username) {
            username = client.username.as_deref().filter(|u| safe(u))?;
        }
        let mut client_id = "";
        if self.parts.contains(&Part::ClientId) {
            client_id = Some(&*client.client_id).filter(|c| safe(c))?;
        }
        Some(Cow::Owned(self.fill(username, client_id)))
    }
}

fn safe(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('$') && !value.contains(['+', '#', '/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;

    fn client(id: &str, user: Option<&str>) -> Client {
        Client {
            client_id: id.into(),
            username: user.map(Into::into),
            remote_addr: None,
            certificate: None,
            protocol: ProtocolVersion::V5,
            inline: false,
        }
    }

    fn expand(filter: &str, c: &Client) -> Option<String> {
        FilterTemplate::parse(filter)
            .unwrap()
            .expand(c)
            .map(Cow::into_owned)
    }

    #[test]
    fn placeholders_are_filled() {
        let c = client("dev1", Some("alice"));
        assert_eq!(expand("devices/%c/#", &c).unwrap(), "devices/dev1/#");
        assert_eq!(expand("users/%u/%c", &c).unwrap(), "users/alice/dev1");
        assert_eq!(expand("u-%u", &c).unwrap(), "u-alice");
        assert_eq!(expand("100%%/x", &c).unwrap(), "100%/x");
        assert_eq!(expand("plain/#", &c).unwrap(), "plain/#");
    }

    #[test]
    fn unsafe_values_do_not_fill() {
        assert_eq!(expand("users/%u/#", &client("c", None)), None);
        for bad in ["+", "#", "a/b", "", "$SYS", "a+", "x\0"] {
            assert_eq!(
                expand("users/%u/#", &client("c", Some(bad))),
                None,
                "{bad:?}"
            );
            assert_eq!(
                expand("devices/%c", &client(bad, Some("u"))),
                None,
                "{bad:?}"
            );
        }
        // A filter without placeholders does not care.
        assert!(expand("a/#", &client("a/b", Some("+"))).is_some());
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in [
            "a/%x",
            "a/%",
            "a/#/b",
            "a/b+",
            "",
            "$share/g/a",
            "%u#",
            "a/+%c",
        ] {
            assert!(FilterTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
