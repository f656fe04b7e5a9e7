//! asciicast v2 files: a JSON header line, then one JSON array per event
//! (`[seconds, "o", text]` output, `"i"` input, `"r"` a resize to
//! `"COLSxROWS"`, `"m"` a marker), as asciinema writes and plays them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

/// What happened in a session, as the stream readers found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Happened {
    /// Bytes of the container's stdout or stderr.
    Output(Vec<u8>),
    /// Bytes sent to its stdin.
    Input(Vec<u8>),
    /// The terminal's new size.
    Resize { width: u16, height: u16 },
    /// A note on the recording itself (what could not be read).
    Marker(String),
}

impl Happened {
    /// The bytes it holds, as the queue's budget counts them.
    pub(super) fn size(&self) -> usize {
        match self {
            Happened::Output(bytes) | Happened::Input(bytes) => bytes.len(),
            Happened::Resize { .. } => 0,
            Happened::Marker(text) => text.len(),
        }
    }
}

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct CastHeader {
    /// Always 2.
    pub version: u8,
    /// Columns at the start (80 until the client says).
    pub width: u16,
    /// Rows at the start.
    pub height: u16,
    /// When the session started, in seconds since the Unix epoch.
    pub timestamp: u64,
    /// Who did what where (`alice exec default/web/app`).
    #[serde(default)]
    pub title: String,
}

/// One event of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    /// Seconds since the session started.
    pub time: f64,
    /// `o` output, `i` input, `r` resize, `m` marker.
    pub kind: String,
    /// The text (or `COLSxROWS` for a resize).
    pub data: String,
}

/// A recording read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    /// Its header.
    pub header: CastHeader,
    /// Its events, in order.
    pub events: Vec<CastEvent>,
}

impl Cast {
    /// Reads an asciicast v2 file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Cast, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or("line 1: empty: not an asciicast file")?;
        let header: CastHeader = serde_json::from_str(first)
            .map_err(|e| format!("line 1: not an asciicast v2 header: {e}"))?;
        if header.version != 2 {
            return Err(format!(
                "line 1: asciicast version {} (only version 2 is read)",
                header.version
            ));
        }
        let mut events = Vec::new();
        for (n, line) in lines {
            let (time, kind, data): (f64, String, String) = serde_json::from_str(line)
                .map_err(|e| format!("line {}: not an asciicast event: {e}", n + 1))?;
            events.push(CastEvent { time, kind, data });
        }
        Ok(Cast { header, events })
    }

    /// The output of the session, as a terminal was sent it.
    pub fn output(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.kind == "o")
            .map(|e| e.data.as_str())
            .collect()
    }
}

/// Text for `bytes` after what `carry` kept: a UTF-8 sequence cut at the end
/// waits in `carry` for the rest, invalid bytes become U+FFFD.
fn text(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                rest = &[];
                break;
            }
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match error.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    // Cut short: the rest may come with the next bytes.
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let kept = rest.to_vec();
    *carry = kept;
    out
}

/// Where a recording goes and how much of it may.
pub(super) struct Writer {
    /// The file, created for it.
    pub file: std::fs::File,
    /// Its first line.
    pub header: CastHeader,
    /// Where the file stops growing.
    pub max_bytes: u64,
    /// Bytes the stream readers could not hand over (the writer was behind).
    pub dropped: Arc<AtomicU64>,
    /// Bytes handed over and not written yet, this session's and every
    /// session's: the writer takes back what it wrote.
    pub queued: [Arc<AtomicUsize>; 2],
    /// The recorder's counters (a recording cut short by a failed write).
    pub counters: Arc<crate::counters::RecordingCounters>,
}

impl Writer {
    /// Writes what `events` brings until it closes (the session ended), as
    /// a task whose file writes run briefly on tokio's blocking threads
    /// (none is held for the session); a full file or a failed write stops
    /// the recording and never the session.
    pub(super) async fn run(self, mut events: mpsc::Receiver<(Duration, Happened)>, name: String) {
        use tokio::io::AsyncWriteExt as _;
        let Writer {
            file,
            header,
            max_bytes,
            dropped,
            queued,
            counters,
        } = self;
        // `None` once a write failed: the rest of the session goes unrecorded.
        let mut out = Some(tokio::io::BufWriter::with_capacity(
            32 * 1024,
            tokio::fs::File::from_std(file),
        ));
        let mut written: u64 = 0;
        let mut full = false;
        let mut last = Duration::ZERO;
        let mut carries = (Vec::new(), Vec::new());
        // Numbers and a string: it always serializes.
        let head = serde_json::to_string(&header).unwrap_or_default();
        let mut lines: Vec<String> = vec![head.clone()];
        loop {
            for line in lines.drain(..) {
                let Some(sink) = out.as_mut() else {
                    break;
                };
                written += line.len() as u64 + 1;
                if let Err(error) = sink.write_all(format!("{line}\n").as_bytes()).await {
                    if let Some(sink) = out.take() {
                        end_early(sink, &head, last, &error, &name, &counters).await;
                    }
                }
            }
            let Some((at, happened)) = events.recv().await else {
                break;
            };
            let size = happened.size();
            for budget in &queued {
                budget.fetch_sub(size, Ordering::Relaxed);
            }
            if full || out.is_none() {
                continue;
            }
            last = at;
            let (kind, data) = match happened {
                Happened::Output(bytes) => ("o", text(&mut carries.0, &bytes)),
                Happened::Input(bytes) => ("i", text(&mut carries.1, &bytes)),
                Happened::Resize { width, height } => ("r", format!("{width}x{height}")),
                Happened::Marker(text) => ("m", text),
            };
            if data.is_empty() {
                continue;
            }
            let Ok(event) = serde_json::to_string(&(seconds(at), kind, data)) else {
                continue;
            };
            if written + event.len() as u64 + 1 > max_bytes {
                full = true;
                lines.push(marker(
                    at,
                    format!("recording stopped: the size limit of {max_bytes} bytes was reached"),
                ));
                continue;
            }
            lines.push(event);
        }
        let Some(mut sink) = out else {
            return;
        };
        let lost = dropped.load(Ordering::Relaxed);
        let mut ended = Ok(());
        if lost > 0 {
            let line = marker(
                last,
                format!("{lost} bytes of the session were not recorded: the recording fell behind"),
            );
            ended = sink.write_all(format!("{line}\n").as_bytes()).await;
        }
        // No flush after a failed write: it would write the buffer after
        // the part of a line the failure left.
        let ended = match ended {
            Ok(()) => sink.flush().await,
            failed => failed,
        };
        if let Err(error) = ended {
            end_early(sink, &head, last, &error, &name, &counters).await;
        }
    }
}

/// Ends a recording a write of which failed (a full disk, say): logged and
/// counted, and the file cut back to its last whole line with a marker
/// saying why it ends there (when there is room for it), so that it still
/// reads and plays. What was buffered and not written is given up.
async fn end_early(
    sink: tokio::io::BufWriter<tokio::fs::File>,
    header: &str,
    at: Duration,
    error: &std::io::Error,
    name: &str,
    counters: &crate::counters::RecordingCounters,
) {
    tracing::warn!(recording = %name, %error, "the session recording could not be written; it ends here, the session goes on");
    counters.truncated.fetch_add(1, Ordering::Relaxed);
    let file = sink.into_inner().into_std().await;
    let header = header.to_owned();
    let note = marker(at, format!("recording stopped: writing it failed: {error}"));
    let cut = tokio::task::spawn_blocking(move || cut_to_last_line(file, &header, &note)).await;
    if let Ok(Err(error)) = cut {
        tracing::warn!(recording = %name, %error, "the session recording could not be cut back to its last whole line");
    }
}

/// Cuts `file` back to its last whole line and adds `note` there (after
/// `header` when no whole line is left). When that cannot be written (the
/// disk is full), it cuts back far enough for the note to fit in the room
/// the file already held; and failing that, the file keeps its whole lines,
/// or the header alone, so that it still reads.
fn cut_to_last_line(mut file: std::fs::File, header: &str, note: &str) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let (header, note) = (format!("{header}\n"), format!("{note}\n"));
    // Both found before anything is cut: the last whole line, and the last
    // one that leaves room for the note in what the file held.
    let last = line_end_before(&mut file, len)?;
    let roomy = line_end_before(&mut file, last.min(len.saturating_sub(note.len() as u64)))?;
    for keep in [last, roomy] {
        let tail = if keep == 0 {
            format!("{header}{note}")
        } else {
            note.clone()
        };
        if end_with(&mut file, keep, &tail)? {
            return Ok(());
        }
    }
    if roomy == 0 {
        end_with(&mut file, 0, &header)?;
    }
    Ok(())
}

/// Where the last whole line before `limit` ends in `file` (0 when none
/// does).
fn line_end_before(file: &mut std::fs::File, limit: u64) -> std::io::Result<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut end = limit;
    let mut chunk = vec![0; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let piece = &mut chunk[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(piece)?;
        if let Some(at) = piece.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Cuts `file` to `keep` bytes and writes `tail` after them: whether it
/// could (the file is left at `keep` bytes when not).
fn end_with(file: &mut std::fs::File, keep: u64, tail: &str) -> std::io::Result<bool> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    file.set_len(keep)?;
    file.seek(SeekFrom::Start(keep))?;
    if file
        .write_all(tail.as_bytes())
        .and_then(|()| file.sync_data())
        .is_ok()
    {
        return Ok(true);
    }
    file.set_len(keep)?;
    Ok(false)
}

/// A marker event's line.
fn marker(at: Duration, text: String) -> String {
    serde_json::to_string(&(seconds(at), "m", text)).unwrap_or_default()
}

fn seconds(at: Duration) -> f64 {
    (at.as_micros() as f64) / 1_000_000.0
}

/// Creates `path` for a recording (never over an existing file), readable
/// by its owner only.
pub(super) fn create(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    // Read too: a recording cut short by a failed write is cut back to its
    // last whole line.
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cut_inside_a_character_waits_for_the_rest() {
        let mut carry = Vec::new();
        let snow = "☃".as_bytes();
        assert_eq!(text(&mut carry, &[b'a', snow[0]]), "a");
        assert_eq!(text(&mut carry, &snow[1..]), "☃");
        assert_eq!(text(&mut carry, b"\xffb"), "\u{fffd}b");
        assert!(carry.is_empty());
    }

    #[tokio::test]
    async fn a_recording_stops_at_its_size_limit_with_a_marker_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let dropped = Arc::new(AtomicU64::new(3));
        let writer = Writer {
            file: create(&path).unwrap(),
            header: CastHeader {
                version: 2,
                width: 80,
                height: 24,
                timestamp: 1,
                title: "alice exec default/p".into(),
            },
            max_bytes: 200,
            dropped,
            queued: [Arc::default(), Arc::default()],
            counters: Arc::default(),
        };
        let (send, receive) = mpsc::channel(16);
        send.try_send((
            Duration::from_millis(1),
            Happened::Resize {
                width: 100,
                height: 30,
            },
        ))
        .unwrap();
        send.try_send((
            Duration::from_millis(2),
            Happened::Output(b"hello\r\n".to_vec()),
        ))
        .unwrap();
        send.try_send((Duration::from_millis(3), Happened::Input(b"ls\r".to_vec())))
            .unwrap();
        send.try_send((Duration::from_millis(4), Happened::Output(vec![b'x'; 500])))
            .unwrap();
        send.try_send((Duration::from_millis(5), Happened::Output(b"late".to_vec())))
            .unwrap();
        drop(send);
        writer.run(receive, "s".into()).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 400, "{text}");
        let cast = Cast::parse(&text).unwrap();
        assert_eq!(cast.header.title, "alice exec default/p");
        let kinds: Vec<(&str, &str)> = cast
            .events
            .iter()
            .map(|e| (e.kind.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            kinds[..3],
            [("r", "100x30"), ("o", "hello\r\n"), ("i", "ls\r")]
        );
        assert_eq!(kinds[3].0, "m");
        assert!(kinds[3].1.contains("size limit of 200 bytes"), "{kinds:?}");
        assert!(kinds[4].1.contains("3 bytes"), "{kinds:?}");
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert_eq!(cast.output(), "hello\r\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    /// A recording cut short by a failed write ends at its last whole line,
    /// then the note; with no whole line, the header and the note.
    #[test]
    fn a_recording_cut_short_ends_at_its_last_whole_line_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.cast");
        let head = r#"{"version":2,"width":80,"height":24,"timestamp":1,"title":""}"#;
        let note = r#"[0.5,"m","recording stopped: writing it failed: disk full"]"#;
        // The cut line is past the first 64 KiB read back from the end.
        let long = format!("[0.1,\"o\",\"{}\"]", "y".repeat(70_000));
        let half = &long[..long.len() - 10];
        for (written, kept) in [
            (
                format!("{head}\n[0.1,\"o\",\"a\"]\n{half}"),
                format!("{head}\n[0.1,\"o\",\"a\"]\n"),
            ),
            (
                format!("{head}\n{long}\n[0.2,\"o\",\"b"),
                format!("{head}\n{long}\n"),
            ),
            ("{\"vers".to_string(), String::new()),
            (String::new(), String::new()),
        ] {
            std::fs::write(&path, &written).unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            cut_to_last_line(file, head, note).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let wanted = if kept.is_empty() {
                format!("{head}\n{note}\n")
            } else {
                format!("{kept}{note}\n")
            };
            assert!(
                text == wanted,
                "{} bytes, wanted {}",
                text.len(),
                wanted.len()
            );
            let cast = Cast::parse(&text).unwrap();
            assert_eq!(cast.events.last().unwrap().kind, "m");
        }
    }

    /// A write that fails (`/dev/full`: no space left) ends the recording,
    /// counted; the writer still takes every event, so the session's queue
    /// budget is given back.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_write_ends_the_recording_counted_and_the_queue_drains() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let queued: [Arc<AtomicUsize>; 2] = [Arc::default(), Arc::default()];
        let counters = Arc::new(crate::counters::RecordingCounters::default());
        let writer = Writer {
            file,
            header: CastHeader {
                version: 2,
                width: 80,
                height: 24,
                timestamp: 1,
                title: String::new(),
            },
            max_bytes: u64::MAX,
            dropped: Arc::default(),
            queued: queued.clone(),
            counters: counters.clone(),
        };
        let (send, receive) = mpsc::channel(64);
        let task = tokio::spawn(writer.run(receive, "full".into()));
        for n in 0..40 {
            let bytes = vec![b'z'; 4096];
            for budget in &queued {
                budget.fetch_add(bytes.len(), Ordering::Relaxed);
            }
            send.send((Duration::from_millis(n), Happened::Output(bytes)))
                .await
                .unwrap();
        }
        drop(send);
        task.await.unwrap();
        assert_eq!(counters.truncated.load(Ordering::Relaxed), 1);
        assert_eq!(queued[0].load(Ordering::Relaxed), 0);
        assert_eq!(queued[1].load(Ordering::Relaxed), 0);
    }
}
