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

/// The most of one inflated header block kept to read (kubectl's are a few
/// hundred bytes); the rest is inflated, to keep the compression context,
/// and let go.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The most streams named at once (kube's remote commands open five).
const MAX_STREAMS: usize = 64;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
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
    /// A control frame: its fixed part (up to `prefix` bytes), then, for a
    /// frame with a header block, the block, inflated as it comes.
    Control {
        kind: u16,
        remaining: usize,
        prefix: usize,
        fixed: Vec<u8>,
        headers: Vec<u8>,
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
    /// Whether this direction's stream could not be read to the end
    /// (header blocks that did not inflate, too many streams): what follows
    /// may be missing from the recording.
    lost: bool,
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
            lost: false,
        }
    }

    /// Whether some of the stream could not be read (see [`SpdyParser::feed`]).
    pub(super) fn lost(&self) -> bool {
        self.lost
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
                        let kind = u16::from_be_bytes([self.head[2], self.head[3]]);
                        State::Control {
                            kind,
                            remaining: length,
                            prefix: match kind {
                                SYN_STREAM => 10,
                                SYN_REPLY | HEADERS => 4,
                                _ => 0,
                            },
                            fixed: Vec::new(),
                            headers: Vec::new(),
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
                    remaining,
                    prefix,
                    fixed,
                    headers,
                    ..
                } => {
                    let n = (*remaining).min(data.len());
                    let (chunk, rest) = data.split_at(n);
                    *remaining -= n;
                    data = rest;
                    let take = (*prefix - fixed.len()).min(chunk.len());
                    fixed.extend_from_slice(&chunk[..take]);
                    let block = &chunk[take..];
                    // Every header block of this direction goes through the
                    // one compression context, in order, whole.
                    if *prefix > 0 && !block.is_empty() {
                        if let Some(inflate) = self.inflate.as_mut() {
                            if inflate_into(inflate, block, headers).is_err() {
                                self.inflate = None;
                                self.lost = true;
                            }
                        }
                    }
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
    /// finished `SYN_STREAM` names.
    fn end_if_done(&mut self, streams: &mut HashMap<u32, StreamKind>) {
        let done = match &self.state {
            State::Head => false,
            State::Control { remaining, .. } | State::Data { remaining, .. } => *remaining == 0,
        };
        if !done {
            return;
        }
        if let State::Control {
            kind: SYN_STREAM,
            fixed,
            headers,
            ..
        } = std::mem::replace(&mut self.state, State::Head)
        {
            if fixed.len() < 4 || self.inflate.is_none() {
                return;
            }
            let stream = u32::from_be_bytes([fixed[0] & 0x7f, fixed[1], fixed[2], fixed[3]]);
            if let Some(value) = header_value(&headers, b"streamtype") {
                if streams.len() >= MAX_STREAMS && !streams.contains_key(&stream) {
                    self.lost = true;
                    return;
                }
                streams.insert(stream, StreamKind::from_header(value));
            }
        }
    }
}

/// Inflates `block` (the next bytes of a header block) with `inflate`,
/// keeping the first [`MAX_HEADER_BLOCK`] bytes of what comes out in `out`;
/// the zlib dictionary of SPDY/3 is given when the stream asks for it. An
/// error when the bytes do not inflate.
fn inflate_into(inflate: &mut Decompress, mut block: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let mut scratch = [0u8; 4096];
    let keep = |made: usize, scratch: &[u8], out: &mut Vec<u8>| {
        let room = MAX_HEADER_BLOCK.saturating_sub(out.len());
        out.extend_from_slice(&scratch[..made.min(room)]);
    };
    // Until every byte is taken and zlib holds nothing more back.
    loop {
        let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
        let asked_dictionary = match inflate.decompress(block, &mut scratch, FlushDecompress::Sync)
        {
            Ok(flate2::Status::StreamEnd) => return Err(()),
            Ok(_) => false,
            Err(error) => {
                if error.needs_dictionary().is_none()
                    || inflate.set_dictionary(&dictionary()).is_err()
                {
                    return Err(());
                }
                true
            }
        };
        let used = usize::try_from(inflate.total_in() - before_in).map_err(|_| ())?;
        let made = usize::try_from(inflate.total_out() - before_out).map_err(|_| ())?;
        keep(made, &scratch, out);
        block = block.get(used..).ok_or(())?;
        if used == 0 && made == 0 && !asked_dictionary {
            // No progress: done if nothing is left, else unreadable.
            return if block.is_empty() { Ok(()) } else { Err(()) };
        }
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
    fn a_huge_header_block_and_a_client_syn_reply_keep_the_context_in_step() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut client = Vec::new();
        // A stream with a 1 MiB header (a few KiB compressed), past what
        // is kept of an inflated block.
        let huge = "x".repeat(1 << 20);
        let block = compress(&mut deflate, &header_block(&[("padding", &huge)]));
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        client.extend([0x80, 3, 0, 1, 0]);
        client.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        client.extend(body);
        // A SYN_REPLY from the client: its block shares the context too.
        let block = compress(&mut deflate, &header_block(&[("status", "200")]));
        let mut body = 3u32.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        client.extend([0x80, 3, 0, 2, 0]);
        client.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        client.extend(body);
        client.extend(syn_stream(&mut deflate, 5, "stdin"));
        client.extend(data(5, b"still read\n"));
        let mut streams = HashMap::new();
        let mut seen = Vec::new();
        let mut parser = SpdyParser::new(true);
        for piece in client.chunks(1000) {
            parser.feed(piece, &mut streams, &mut |kind, bytes| {
                seen.push((kind, bytes.to_vec()))
            });
        }
        assert!(!parser.lost());
        assert_eq!(seen, [(StreamKind::Stdin, b"still read\n".to_vec())]);
    }

    #[test]
    fn what_cannot_be_read_is_said_and_streams_are_bounded() {
        // Not zlib at all.
        let mut parser = SpdyParser::new(true);
        let mut frame = vec![0x80, 3, 0, 1, 0, 0, 0, 14];
        frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        parser.feed(&frame, &mut HashMap::new(), &mut |_, _| {});
        assert!(parser.lost());
        // More streams than any remote command opens.
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut client = Vec::new();
        for stream in 0..(MAX_STREAMS as u32 + 10) {
            client.extend(syn_stream(&mut deflate, 2 * stream + 1, "stdout"));
        }
        let mut parser = SpdyParser::new(true);
        let mut streams = HashMap::new();
        parser.feed(&client, &mut streams, &mut |_, _| {});
        assert_eq!(streams.len(), MAX_STREAMS);
        assert!(parser.lost());
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
