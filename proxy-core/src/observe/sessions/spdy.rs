//! Reads SPDY/3.1 as kube's remote command protocols use it (kubectl's
//! fallback from WebSocket): the client opens one stream per purpose with a
//! `SYN_STREAM` whose `streamtype` header says which (`stdin`, `stdout`,
//! `stderr`, `error`, `resize`), and data frames carry each stream's bytes.
//!
//! Header blocks are zlib-compressed with the dictionary of the SPDY/3
//! specification (section 2.6.10.1), one compression context per direction
//! for the whole connection, so every header block of the client's
//! direction is inflated in order, even those not needed.

use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress};

/// The most of one control frame kept to read (kubectl's are a few hundred
/// bytes); the rest of a longer one is skipped.
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// The most a header block may inflate to.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const SYN_STREAM: u16 = 1;
const HEADERS: u16 = 8;

/// What a stream carries, from its `streamtype` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    Resize,
    Other,
}

impl StreamKind {
    fn from_header(value: &[u8]) -> StreamKind {
        match value {
            b"stdin" => StreamKind::Stdin,
            b"stdout" => StreamKind::Stdout,
            b"stderr" => StreamKind::Stderr,
            b"resize" => StreamKind::Resize,
            _ => StreamKind::Other,
        }
    }
}

/// The dictionary header blocks are compressed with: the words of the
/// SPDY/3 specification, each after its length as 4 bytes, then its text.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TEXT: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TEXT.as_bytes());
    out
}

enum State {
    Head,
    Control {
        kind: u16,
        remaining: usize,
        body: Vec<u8>,
    },
    Data {
        stream: u32,
        remaining: usize,
    },
}

/// The reading of one direction of a SPDY connection.
pub(super) struct SpdyParser {
    head: [u8; 8],
    have: usize,
    state: State,
    /// Reads header blocks (in the client's direction only); `None` once
    /// one failed to inflate, after which none can.
    inflate: Option<Decompress>,
}

impl std::fmt::Debug for SpdyParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyParser")
            .field("reads_headers", &self.inflate.is_some())
            .finish_non_exhaustive()
    }
}

impl SpdyParser {
    /// A reader of the client's direction (which names the streams) when
    /// `client`, else of the server's.
    pub(super) fn new(client: bool) -> SpdyParser {
        SpdyParser {
            head: [0; 8],
            have: 0,
            state: State::Head,
            inflate: client.then(|| Decompress::new(true)),
        }
    }

    /// Reads `data`, the next bytes of this direction: streams the client
    /// opens go in `streams`, and `out` is called with each piece of a
    /// known stream's data.
    pub(super) fn feed(
        &mut self,
        mut data: &[u8],
        streams: &mut HashMap<u32, StreamKind>,
        out: &mut dyn FnMut(StreamKind, &[u8]),
    ) {
        while !data.is_empty() {
            match &mut self.state {
                State::Head => {
                    let take = (8 - self.have).min(data.len());
                    self.head[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have < 8 {
                        continue;
                    }
                    self.have = 0;
                    let length =
                        u32::from_be_bytes([0, self.head[5], self.head[6], self.head[7]]) as usize;
                    self.state = if self.head[0] & 0x80 != 0 {
                        State::Control {
                            kind: u16::from_be_bytes([self.head[2], self.head[3]]),
                            remaining: length,
                            body: Vec::new(),
                        }
                    } else {
                        State::Data {
                            stream: u32::from_be_bytes([
                                self.head[0] & 0x7f,
                                self.head[1],
                                self.head[2],
                                self.head[3],
                            ]),
                            remaining: length,
                        }
                    };
                    self.end_if_done(streams);
                }
                State::Control {
                    remaining, body, ..
                } => {
                    let n = (*remaining).min(data.len());
                    let room = MAX_CONTROL_FRAME.saturating_sub(body.len());
                    body.extend_from_slice(&data[..n.min(room)]);
                    *remaining -= n;
                    data = &data[n..];
                    self.end_if_done(streams);
                }
                State::Data { stream, remaining } => {
                    let n = (*remaining).min(data.len());
                    if let Some(kind) = streams.get(stream) {
                        if n > 0 {
                            out(*kind, &data[..n]);
                        }
                    }
                    *remaining -= n;
                    data = &data[n..];
                    self.end_if_done(streams);
                }
            }
        }
    }

    /// Back to reading a frame header once the frame is read, taking what a
    /// finished control frame says.
    fn end_if_done(&mut self, streams: &mut HashMap<u32, StreamKind>) {
        let done = match &self.state {
            State::Head => false,
            State::Control { remaining, .. } | State::Data { remaining, .. } => *remaining == 0,
        };
        if !done {
            return;
        }
        if let State::Control { kind, body, .. } = std::mem::replace(&mut self.state, State::Head) {
            let block_at = match kind {
                SYN_STREAM => 10,
                HEADERS => 4,
                _ => return,
            };
            if body.len() < block_at {
                return;
            }
            let stream = u32::from_be_bytes([body[0] & 0x7f, body[1], body[2], body[3]]);
            let Some(headers) = self.inflate(&body[block_at..]) else {
                return;
            };
            if kind == SYN_STREAM {
                if let Some(value) = header_value(&headers, b"streamtype") {
                    streams.insert(stream, StreamKind::from_header(value));
                }
            }
        }
    }

    fn inflate(&mut self, mut block: &[u8]) -> Option<Vec<u8>> {
        let inflate = self.inflate.as_mut()?;
        let mut out = Vec::with_capacity(block.len() * 4 + 256);
        let mut ok = true;
        for _ in 0..64 {
            let before = inflate.total_in();
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            if let Err(error) = inflate.decompress_vec(block, &mut out, FlushDecompress::Sync) {
                if error.needs_dictionary().is_none()
                    || inflate.set_dictionary(&dictionary()).is_err()
                {
                    ok = false;
                    break;
                }
            }
            let used = usize::try_from(inflate.total_in() - before).unwrap_or(block.len());
            block = &block[used.min(block.len())..];
            if out.len() > MAX_HEADER_BLOCK {
                ok = false;
                break;
            }
            if block.is_empty() && out.len() < out.capacity() {
                return Some(out);
            }
        }
        if !ok {
            // The context is lost: no later block can be read either.
            self.inflate = None;
        }
        None
    }
}

/// The first value of `name` in an inflated SPDY/3 header block.
fn header_value<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes = block.get(at..at + 4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    };
    let count = read_u32(0)?;
    let mut at = 4;
    for _ in 0..count {
        let name_len = read_u32(at)?;
        let this = block.get(at + 4..at + 4 + name_len)?;
        at += 4 + name_len;
        let value_len = read_u32(at)?;
        let value = block.get(at + 4..at + 4 + value_len)?;
        at += 4 + value_len;
        if this == name {
            return value.split(|b| *b == 0).next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn header_block(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_be_bytes().to_vec();
        for (name, value) in pairs {
            for text in [name, value] {
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        out
    }

    fn compress(deflate: &mut Compress, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(block.len() + 1024);
        deflate
            .compress_vec(block, &mut out, FlushCompress::Sync)
            .unwrap();
        out
    }

    fn syn_stream(deflate: &mut Compress, stream: u32, kind: &str) -> Vec<u8> {
        let block = compress(
            deflate,
            &header_block(&[("streamtype", kind), ("port", "")]),
        );
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        let mut frame = vec![0x80, 3, 0, 1, 0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(&body);
        frame
    }

    fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
        let mut frame = stream.to_be_bytes().to_vec();
        frame.push(0);
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(bytes);
        frame
    }

    #[test]
    fn the_dictionary_is_the_one_of_the_specification() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        // zlib names a preset dictionary by its Adler-32.
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(deflate.set_dictionary(&dictionary).unwrap(), 0x_e3c6_a7c2);
    }

    #[test]
    fn streams_are_named_by_their_syn_stream_and_their_data_read() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut client = Vec::new();
        client.extend(syn_stream(&mut deflate, 1, "error"));
        client.extend(syn_stream(&mut deflate, 3, "stdin"));
        client.extend(syn_stream(&mut deflate, 5, "stdout"));
        client.extend(syn_stream(&mut deflate, 7, "resize"));
        // A ping (type 6) between them is read past.
        client.extend([0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        client.extend(data(3, b"typed\n"));
        client.extend(data(7, br#"{"Width":90,"Height":20}"#));
        let server = data(5, b"printed\n");
        for step in [1, 5, 4096] {
            let mut streams = HashMap::new();
            let mut seen = Vec::new();
            let mut parser = SpdyParser::new(true);
            for piece in client.chunks(step) {
                parser.feed(piece, &mut streams, &mut |kind, bytes| {
                    seen.push((kind, bytes.to_vec()))
                });
            }
            let mut parser = SpdyParser::new(false);
            for piece in server.chunks(step) {
                parser.feed(piece, &mut streams, &mut |kind, bytes| {
                    seen.push((kind, bytes.to_vec()))
                });
            }
            let joined = |want: StreamKind| -> Vec<u8> {
                seen.iter()
                    .filter(|(kind, _)| *kind == want)
                    .flat_map(|(_, bytes)| bytes.clone())
                    .collect()
            };
            assert_eq!(joined(StreamKind::Stdin), b"typed\n", "step {step}");
            assert_eq!(
                joined(StreamKind::Resize),
                br#"{"Width":90,"Height":20}"#,
                "step {step}"
            );
            assert_eq!(joined(StreamKind::Stdout), b"printed\n", "step {step}");
            assert_eq!(streams.get(&1), Some(&StreamKind::Other), "step {step}");
        }
    }
}
