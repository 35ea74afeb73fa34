//! Forms posted to the console (`application/x-www-form-urlencoded`): read with a
//! size limit, decoded into zeroized memory (a form may hold a secret value).

use crate::admin::MAX_BODY_BYTES;
use crate::proxy::error::{Code, Deny};
use crate::secret::Secret;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use zeroize::Zeroizing;

/// A decoded form: name → value, every value wiped on drop.
pub struct Form {
    fields: Vec<(String, Zeroizing<Vec<u8>>)>,
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `%XX` and `+` decoding into a zeroized buffer.
fn decode(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => match (hex_val(raw[i + 1]), hex_val(raw[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        let fields = body
            .split(|&b| b == b'&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = match p.iter().position(|&b| b == b'=') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (p, &p[p.len()..]),
                };
                let k = String::from_utf8_lossy(&decode(k)).into_owned();
                (k, decode(v))
            })
            .collect();
        Form { fields }
    }

    /// Reads and decodes the body of `req` (at most [`MAX_BODY_BYTES`]).
    pub async fn read(req: Request<Incoming>) -> Result<Form, Deny> {
        let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Deny::payload_too_large(MAX_BODY_BYTES as u64))
            }
            Err(_) => return Err(Deny::new(Code::BadRequest, "could not read the form body")),
        };
        let bytes = Zeroizing::new(Vec::from(bytes));
        Ok(Form::parse(&bytes))
    }

    /// A text field, trimmed; `""` when absent or not UTF-8.
    pub fn text(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// A field as given (not trimmed), if present and UTF-8: for the CSRF token.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// A secret field, moved out of the form into a [`Secret`] (`None` if empty).
    pub fn secret(&mut self, name: &str) -> Option<Secret> {
        let i = self.fields.iter().position(|(k, _)| k == name)?;
        let (_, v) = self.fields.swap_remove(i);
        (!v.is_empty()).then(|| Secret::new(v.to_vec()))
    }

    /// The admin token field, kept in zeroized memory.
    pub fn token(&mut self, name: &str) -> Option<Zeroizing<String>> {
        let i = self.fields.iter().position(|(k, _)| k == name)?;
        let (_, v) = self.fields.swap_remove(i);
        let s = std::str::from_utf8(&v).ok()?.trim();
        (!s.is_empty()).then(|| Zeroizing::new(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent() {
        let mut f = Form::parse(b"name=A_B&value=x%2By+z%&desc=%41%zz&empty=");
        assert_eq!(f.text("name"), "A_B");
        assert_eq!(f.text("desc"), "A%zz");
        assert_eq!(f.raw("empty"), Some(""));
        assert!(f.secret("empty").is_none());
        let v = f.secret("value").expect("value");
        assert_eq!(v.expose(), b"x+y z%");
        assert!(f.secret("value").is_none());
    }
}
