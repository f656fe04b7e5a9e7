//! `authproxy sessions play`: replays a recorded exec or attach session
//! (an asciicast v2 file from `sessionRecording`) on the terminal, its
//! output at the pace it was recorded.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use proxy_core::observe::sessions::Cast;

/// How fast a recording plays.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// How much faster than recorded.
    pub speed: f64,
    /// The longest pause between two outputs, in seconds.
    pub idle_limit: f64,
}

/// The pause before an output `gap` seconds after the one before.
fn pause(gap: f64, pace: Pace) -> Duration {
    let speed = if pace.speed > 0.0 { pace.speed } else { 1.0 };
    let seconds = (gap / speed).clamp(0.0, pace.idle_limit.max(0.0));
    Duration::try_from_secs_f64(seconds).unwrap_or_default()
}

/// Plays `file` on standard output; without `pace`, all at once. Markers
/// (a size limit reached, bytes not recorded, a write that failed) go to
/// standard error.
pub fn play(file: &Path, pace: Option<Pace>) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let cast = Cast::parse(&text)?;
    let mut out = std::io::stdout().lock();
    let mut last = 0.0;
    for event in &cast.events {
        match event.kind.as_str() {
            "o" => {
                if let Some(pace) = pace {
                    let wait = pause(event.time - last, pace);
                    if !wait.is_zero() {
                        out.flush().map_err(|e| e.to_string())?;
                        std::thread::sleep(wait);
                    }
                }
                last = event.time;
                out.write_all(event.data.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            "m" => {
                out.flush().map_err(|e| e.to_string())?;
                eprintln!("[recording: {}]", event.data);
            }
            _ => {}
        }
    }
    out.flush().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_follow_the_speed_and_stop_at_the_idle_limit() {
        let pace = Pace {
            speed: 2.0,
            idle_limit: 1.5,
        };
        assert_eq!(pause(1.0, pace), Duration::from_millis(500));
        assert_eq!(pause(60.0, pace), Duration::from_millis(1500));
        assert_eq!(pause(-1.0, pace), Duration::ZERO);
    }
}
