//! `Content-Encoding`: the codings a body was sent with, and a reader that undoes them.
//!
//! The engine decodes bodies itself rather than letting reqwest do it: reqwest's gzip decoder
//! reads only the first member of a multi-member body (what pigz, bgzip, appended uploads and
//! object stores composing parts produce) and ends without an error, so the rest of a file
//! vanished silently. Here every gzip member is decoded (`flate2`'s `MultiGzDecoder`),
//! `x-gzip` is gzip (RFC 9110 §8.4.1.3), `deflate` is the zlib format — or the raw deflate
//! stream some servers send under that name, told apart by the zlib header — and any other
//! coding is an error that names it.
//!
//! Errors of the reader underneath pass through the decoders unchanged (flate2 forwards them),
//! so a caller can tell a broken transfer (its own error type inside the `io::Error`) from a
//! corrupt compressed stream (anything else).

use reqwest::header::{HeaderMap, CONTENT_ENCODING};
use std::io::{self, Read};

/// One content coding of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// The codings of a response, in the order they were applied (`identity` left out). Err names
/// the `Content-Encoding` the engine cannot decode.
pub(crate) fn codings(h: &HeaderMap) -> Result<Vec<Coding>, String> {
    let mut out = Vec::new();
    for v in h.get_all(CONTENT_ENCODING) {
        let Ok(v) = v.to_str() else {
            return Err("Content-Encoding that is not ASCII".into());
        };
        for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match c.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" => out.push(Coding::Gzip),
                "deflate" => out.push(Coding::Deflate),
                _ => {
                    return Err(format!(
                        "Content-Encoding {:?}, which fhirbulk cannot decode (it decodes gzip, x-gzip and deflate)",
                        crate::error::escape_controls(v)
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// A short name of the codings for messages (`gzip`, `deflate, gzip`).
pub(crate) fn describe(codings: &[Coding]) -> String {
    codings
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `inner` with `codings` undone (the last applied is undone first). An empty body is an empty
/// result whatever the coding (servers label empty files gzip too).
pub(crate) fn reader<'a, R: Read + 'a>(codings: &[Coding], inner: R) -> Box<dyn Read + 'a> {
    let mut r: Box<dyn Read + 'a> = Box::new(inner);
    for &c in codings.iter().rev() {
        r = Box::new(Lazy {
            coding: c,
            inner: Some(r),
            decoder: None,
        });
    }
    r
}

/// A decoder that starts once it has seen the first bytes: an empty body decodes to nothing,
/// and `deflate` picks zlib or raw deflate by the header.
struct Lazy<'a> {
    coding: Coding,
    /// The body until the decoder starts.
    inner: Option<Box<dyn Read + 'a>>,
    decoder: Option<Box<dyn Read + 'a>>,
}

impl<'a> Lazy<'a> {
    fn start(&mut self) -> io::Result<()> {
        let Some(mut inner) = self.inner.take() else {
            return Ok(());
        };
        let mut head = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            match inner.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if got == 0 => {
                    // Nothing consumed: the next read starts over.
                    self.inner = Some(inner);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            // An empty body: nothing to decode.
            return Ok(());
        }
        let whole: Box<dyn Read + 'a> =
            Box::new(io::Cursor::new(head[..got].to_vec()).chain(inner));
        let zlib = got == 2
            && head[0] & 0x0f == 8
            && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
        self.decoder = Some(match self.coding {
            Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
            Coding::Deflate if zlib => Box::new(flate2::read::ZlibDecoder::new(whole)),
            Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(whole)),
        });
        Ok(())
    }
}

impl Read for Lazy<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.decoder.is_none() {
            self.start()?;
        }
        match &mut self.decoder {
            Some(d) => d.read(out),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(codings: &[Coding], body: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader(codings, body).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_gzip_member_is_decoded() {
        let mut body = gz(b"{\"a\":1}\n{\"a\"");
        body.extend(gz(b":2}\n"));
        body.extend(gz(b"{\"a\":3}\n"));
        assert_eq!(
            decode(&[Coding::Gzip], &body).unwrap(),
            b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let data = b"{\"resourceType\":\"Patient\"}\n".repeat(100);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&data).unwrap();
        let mut r = DeflateEncoder::new(Vec::new(), Compression::default());
        r.write_all(&data).unwrap();
        for body in [z.finish().unwrap(), r.finish().unwrap()] {
            assert_eq!(decode(&[Coding::Deflate], &body).unwrap(), data);
        }
    }

    #[test]
    fn stacked_and_empty() {
        let data = b"{\"x\":1}\n";
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&gz(data)).unwrap();
        // gzip applied first, then deflate: undone in reverse.
        let body = z.finish().unwrap();
        assert_eq!(
            decode(&[Coding::Gzip, Coding::Deflate], &body).unwrap(),
            data
        );
        assert_eq!(decode(&[Coding::Gzip], b"").unwrap(), b"");
        assert!(decode(&[Coding::Gzip], b"not gzip at all").is_err());
        let cut = gz(&data.repeat(1000));
        assert!(decode(&[Coding::Gzip], &cut[..cut.len() / 2]).is_err());
    }

    #[test]
    fn header_names() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, "x-gzip".parse().unwrap());
        assert_eq!(codings(&h).unwrap(), vec![Coding::Gzip]);
        h.insert(CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(codings(&h).unwrap(), vec![]);
        h.insert(CONTENT_ENCODING, "br".parse().unwrap());
        let e = codings(&h).unwrap_err();
        assert!(e.contains("\"br\""), "{e}");
    }
}
