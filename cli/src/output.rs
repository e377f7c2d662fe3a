//! Writing to stdout: lines that end quietly when the reader goes away, and the text form of
//! bytes that may not be UTF-8.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe (`lethe list | head -1`) is an
//! `io::ErrorKind::BrokenPipe` error, which `println!` turns into a panic. The commands write
//! with [`print_line`] or `writeln!` and pass the error up; `main` ends a command whose reader
//! went away with exit status 0 and no message ([`is_broken_pipe`]), as `cat` or `grep` do
//! when the SIGPIPE they get is treated as the normal end.

use std::io::Write;

/// Writes `line` and a newline to stdout, and flushes it.
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `println!` that hands back the write's error (a closed pipe) instead of panicking: use it
/// with `?`. Used by the `bench` feature's commands (unused without it).
#[cfg_attr(not(feature = "bench"), allow(unused_macros))]
macro_rules! outln {
    () => {
        $crate::output::print_line("")
    };
    ($($arg:tt)*) => {
        $crate::output::print_line(&format!($($arg)*))
    };
}
#[cfg_attr(not(feature = "bench"), allow(unused_imports))]
pub(crate) use outln;

/// Whether `e` comes from writing to a pipe whose reader has gone away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `bytes` as text that shows every byte and cannot be mistaken: valid UTF-8 as it is, except
/// `\` as `\\`, tab, newline and carriage return as `\t`, `\n`, `\r`, any other control
/// character as `\xNN` (or `\u{NNNN}` beyond ASCII), and each byte that is not part of valid
/// UTF-8 as `\xNN`. So a tab-separated line holds exactly its fields, one per tab, and the
/// bytes can be recovered from it.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_bytes_show_every_byte_and_keep_text_as_it_is() {
        assert_eq!(escape_bytes("héllo wörld".as_bytes()), "héllo wörld");
        assert_eq!(escape_bytes(b"a\tb\nc\\d\r"), "a\\tb\\nc\\\\d\\r");
        assert_eq!(escape_bytes(&[0x00, 0xff, b'x', 0x7f, 0xc3]), "\\x00\\xffx\\x7f\\xc3");
        assert_eq!(escape_bytes("\u{85}".as_bytes()), "\\u{0085}");
        // Two inputs that a lossy conversion would print alike are told apart.
        assert_ne!(escape_bytes(&[0xff]), escape_bytes(&[0xfe]));
        assert_ne!(escape_bytes("\u{fffd}".as_bytes()), escape_bytes(&[0xff]));
    }
}
