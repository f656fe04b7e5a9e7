//! Reading a password from the terminal without showing it.
//!
//! Echo is switched off *before* the prompt is printed, so nothing typed
//! after the prompt appears (even ahead of the read) can be echoed, and it is
//! switched back on when the read ends, also on error. From a pipe (no
//! terminal) the password is a plain line and nothing needs hiding.

use std::io::{BufRead, IsTerminal, Write};

use zeroize::Zeroizing;

/// Restores the terminal's settings when dropped.
#[cfg(unix)]
struct EchoOff {
    saved: rustix::termios::Termios,
}

#[cfg(unix)]
impl EchoOff {
    /// Turns echo off on standard input (a terminal); `None` when it cannot.
    fn new() -> Option<EchoOff> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_modes -= LocalModes::ECHO;
        // Keep the newline echoed so the cursor moves on after Enter.
        quiet.local_modes |= LocalModes::ECHONL;
        tcsetattr(&stdin, OptionalActions::Flush, &quiet).ok()?;
        Some(EchoOff { saved })
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Prints `prompt` on standard error and reads one line from standard input,
/// without echo when standard input is a terminal. The line ending is removed.
pub fn password(prompt: &str) -> std::io::Result<Zeroizing<String>> {
    #[cfg(unix)]
    let _echo_off = if std::io::stdin().is_terminal() {
        Some(EchoOff::new().ok_or_else(|| {
            std::io::Error::other("cannot switch off the terminal's echo for the password")
        })?)
    } else {
        None
    };
    let mut stderr = std::io::stderr();
    stderr.write_all(prompt.as_bytes())?;
    stderr.flush()?;
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let len = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(len);
    Ok(line)
}
