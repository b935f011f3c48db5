//! Settings that must not reach a log: the token secret and connection URLs
//! that may carry a password.
//!
//! `Secret` shows as `[redacted]` wherever it is printed or serialised and
//! is wiped from memory when dropped (`secrecy`). `ConnectionUrl` shows with
//! its password cut out (`redis://:***@host`), so that operators still see
//! which server a message is about. Both give their value only through
//! `expose`, called where a client library needs it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (`auth.secret`).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(SecretString::from(value))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// Serialised as `[redacted]`: only the built-in defaults are serialised
/// (to layer the configuration), and they hold no secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// A connection URL (`redis.url`, `postgres.url`).
#[derive(Clone, PartialEq)]
pub struct ConnectionUrl(Secret);

impl ConnectionUrl {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl From<&str> for ConnectionUrl {
    fn from(value: &str) -> Self {
        Self(Secret::from(value))
    }
}

impl From<String> for ConnectionUrl {
    fn from(value: String) -> Self {
        Self(Secret::from(value))
    }
}

/// The URL without its password.
impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.expose()))
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(self.expose()))
    }
}

impl<'de> Deserialize<'de> for ConnectionUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// Serialised without its password (see `Secret`'s).
impl Serialize for ConnectionUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(self.expose()))
    }
}

/// `url` with the password of its user info (`scheme://user:password@…`)
/// replaced by `***`, for logs and errors. Query parameters named
/// `password` are replaced too.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_cut_out_of_urls() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("postgres://fg:s3cret@db/flashgate?sslmode=require&password=x"),
            "postgres://fg:***@db/flashgate?sslmode=require&password=***"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("user:pw@h"),
            "user:pw@h",
            "not a URL: left as is"
        );
    }

    #[test]
    fn secrets_and_passwords_never_print() {
        let secret = Secret::from("s3cret-s3cret-s3cret");
        let url = ConnectionUrl::from("postgres://fg:s3cret@db/flashgate");
        for shown in [
            format!("{secret:?}"),
            format!("{url} {url:?}"),
            serde_json::to_string(&(secret.clone(), url.clone())).unwrap(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert_eq!(url.to_string(), "postgres://fg:***@db/flashgate");
        assert_eq!(secret.expose(), "s3cret-s3cret-s3cret");
    }
}
