//! Reads kube's WebSocket stream protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, `channel.k8s.io` and their `base64.` forms) as they
//! pass: each data message starts with its channel (a byte, or an ASCII
//! digit in the base64 forms), and the rest is that channel's data.
//!
//! Frames are read as RFC 6455 lays them out, in pieces as they arrive:
//! a header of 2 to 14 bytes, then the payload, unmasked with the frame's
//! key when the client sent it. Control frames (ping, pong, close) may come
//! between the fragments of a message and are skipped.

use base64::Engine as _;

/// The reading of one direction of a WebSocket connection.
#[derive(Debug, Default)]
pub(super) struct WsParser {
    /// The `base64.` form of a protocol: text messages, base64 data.
    base64: bool,
    head: [u8; 14],
    have: usize,
    in_payload: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    offset: usize,
    control: bool,
    fin: bool,
    /// The next payload byte of the message is its channel.
    at_message_start: bool,
    channel: Option<u8>,
    /// Base64 characters of the message not decoded yet (fewer than four).
    text: Vec<u8>,
    undecodable: bool,
}

impl WsParser {
    /// A reader for the protocol `negotiated` (`Sec-WebSocket-Protocol`),
    /// `None` for one it cannot read: kube's channel protocols only
    /// (`[v4.|v5.][base64.]channel.k8s.io`, or none named, which kube reads
    /// as `channel.k8s.io`).
    pub(super) fn new(negotiated: &str) -> Option<WsParser> {
        let base64 = match negotiated {
            "" | "channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io" => false,
            "base64.channel.k8s.io" | "v4.base64.channel.k8s.io" => true,
            _ => return None,
        };
        Some(WsParser {
            base64,
            ..WsParser::default()
        })
    }

    /// Reads `data`, the next bytes of this direction, calling `out` with
    /// each piece of a channel's data.
    pub(super) fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(u8, &[u8])) {
        while !data.is_empty() {
            if !self.in_payload {
                let need = self.head_len();
                let take = (need - self.have).min(data.len());
                self.head[self.have..self.have + take].copy_from_slice(&data[..take]);
                self.have += take;
                data = &data[take..];
                if self.have < 2 || self.have < self.head_len() {
                    continue;
                }
                self.start_frame();
                continue;
            }
            let n = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let (chunk, rest) = data.split_at(n);
            data = rest;
            self.remaining -= n as u64;
            if !self.control {
                match self.mask {
                    Some(mask) => {
                        let unmasked: Vec<u8> = chunk
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(self.offset + i) % 4])
                            .collect();
                        self.payload(&unmasked, out);
                    }
                    None => self.payload(chunk, out),
                }
            }
            self.offset += n;
            if self.remaining == 0 {
                self.end_frame();
            }
        }
    }

    /// How long the header being read is (2 until its length is known).
    fn head_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let length = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + length + mask
    }

    fn start_frame(&mut self) {
        let len = self.head_len();
        let opcode = self.head[0] & 0x0f;
        self.fin = self.head[0] & 0x80 != 0;
        self.remaining = match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(bytes)
            }
            n => u64::from(n),
        };
        self.mask = (self.head[1] & 0x80 != 0).then(|| {
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.head[len - 4..len]);
            key
        });
        self.control = opcode >= 8;
        if !self.control && opcode != 0 {
            // A new data message (opcode 0 continues the one before).
            self.at_message_start = true;
            self.channel = None;
            self.text.clear();
        }
        self.offset = 0;
        self.have = 0;
        self.in_payload = true;
        if self.remaining == 0 {
            self.end_frame();
        }
    }

    fn payload(&mut self, mut bytes: &[u8], out: &mut dyn FnMut(u8, &[u8])) {
        if self.at_message_start {
            let Some((&first, rest)) = bytes.split_first() else {
                return;
            };
            self.at_message_start = false;
            self.channel = Some(if self.base64 {
                first.wrapping_sub(b'0')
            } else {
                first
            });
            bytes = rest;
        }
        let Some(channel) = self.channel else {
            return;
        };
        if self.base64 {
            // Decoded as it comes, four characters at a time (whitespace is
            // skipped, as kube's decoder skips it): nothing waits for the
            // message's end but the last three characters at most.
            self.text
                .extend(bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()));
            let whole = self.text.len() - self.text.len() % 4;
            if whole > 0 {
                let decoded = base64::engine::general_purpose::STANDARD.decode(&self.text[..whole]);
                self.text.drain(..whole);
                match decoded {
                    Ok(decoded) if !decoded.is_empty() => out(channel, &decoded),
                    Ok(_) => {}
                    Err(_) => self.undecodable = true,
                }
            }
        } else if !bytes.is_empty() {
            out(channel, bytes);
        }
    }

    /// Whether some base64 data could not be decoded (and is not recorded).
    pub(super) fn undecodable(&self) -> bool {
        self.undecodable
    }

    fn end_frame(&mut self) {
        self.in_payload = false;
        if self.control || !self.fin {
            return;
        }
        if self.base64 && !self.text.is_empty() {
            // A message whose length is not a whole number of groups.
            self.undecodable = true;
        }
        self.text.clear();
        self.channel = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client (masked with `key`) or a server sends it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn read(parser: &mut WsParser, bytes: &[u8], step: usize) -> Vec<(u8, Vec<u8>)> {
        let mut seen: Vec<(u8, Vec<u8>)> = Vec::new();
        for piece in bytes.chunks(step) {
            parser.feed(piece, &mut |channel, data| match seen.last_mut() {
                Some((last, gathered)) if *last == channel => gathered.extend_from_slice(data),
                _ => seen.push((channel, data.to_vec())),
            });
        }
        seen
    }

    #[test]
    fn channels_are_read_through_fragments_masks_control_frames_and_any_split() {
        let key = Some([0x12, 0x34, 0x56, 0x78]);
        let big = vec![b'x'; 70_000];
        let mut stream = Vec::new();
        stream.extend(frame(true, 2, b"\x00typed\n", key));
        // A fragmented stdin message with a ping between its fragments.
        stream.extend(frame(false, 2, b"\x00frag", key));
        stream.extend(frame(true, 9, b"ping", key));
        stream.extend(frame(true, 0, b"mented\n", key));
        stream.extend(frame(
            true,
            2,
            &[&[4u8][..], br#"{"Width":100,"Height":30}"#].concat(),
            key,
        ));
        stream.extend(frame(true, 2, &[&[1u8][..], &big].concat(), key));
        stream.extend(frame(true, 2, &[], key));
        stream.extend(frame(true, 8, b"\x03\xe8", key));
        for step in [1, 3, 7, 4096, stream.len()] {
            let seen = read(
                &mut WsParser::new("v5.channel.k8s.io").unwrap(),
                &stream,
                step,
            );
            assert_eq!(
                seen,
                [
                    (0, b"typed\nfragmented\n".to_vec()),
                    (4, br#"{"Width":100,"Height":30}"#.to_vec()),
                    (1, big.clone()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn the_base64_forms_are_decoded_as_they_come_whitespace_and_all() {
        for protocol in ["base64.channel.k8s.io", "v4.base64.channel.k8s.io"] {
            let mut stream = frame(true, 1, b"1aGVsbG8K", None);
            stream.extend(frame(false, 1, b"2ZXJy", None));
            stream.extend(frame(true, 0, b"b3IK", None));
            // Padded with newlines past any length a whole-message buffer held.
            let padded = [&b"0"[..], &vec![b'\n'; 2 << 20], b"bHMK"].concat();
            stream.extend(frame(true, 1, &padded, None));
            let mut parser = WsParser::new(protocol).unwrap();
            let seen = read(&mut parser, &stream, 4096);
            assert_eq!(
                seen,
                [
                    (1, b"hello\n".to_vec()),
                    (2, b"error\n".to_vec()),
                    (0, b"ls\n".to_vec())
                ],
                "{protocol}"
            );
            assert!(!parser.undecodable());
        }
        // What it cannot read, it says so rather than read it wrongly.
        assert!(WsParser::new("v6.unknown.k8s.io").is_none());
        let mut parser = WsParser::new("base64.channel.k8s.io").unwrap();
        read(&mut parser, &frame(true, 1, b"1!!!!", None), 1);
        assert!(parser.undecodable());
    }
}
