//! A strict JSON reader (RFC 8259) of the values of one line, for `replay`: strings decoded (lone
//! surrogates as the metrics sink reads them), numbers as their text, other values checked and skipped
//! without recursion.

use std::borrow::Cow;

/// The deepest nesting of a record, its own object counted: a deeper line is foreign (the writer nests at
/// most 64 deep; the Python parser recurses).
pub const MAX_NESTING: usize = 512;

/// A decoded JSON string, and whether it held a lone surrogate (`\uD800` not followed by its pair).
pub struct JsonText<'a> {
    pub text: Cow<'a, str>,
    pub lone_surrogate: bool,
}

/// A strict JSON reader of one line's values (RFC 8259), at a position of it.
pub struct Cursor<'a> {
    /// The line: slices of it cut at ASCII bytes are its text again, without checking the UTF-8 again.
    text: &'a str,
    bytes: &'a [u8],
    /// Whether the line has control bytes at all: only then are strings checked for them.
    has_controls: bool,
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(line: &'a str) -> Self {
        let bytes = line.as_bytes();
        // One pass that the compiler vectorizes, instead of a check of every string's bytes.
        let has_controls = bytes.iter().fold(false, |found, &byte| found | (byte < 0x20));
        Cursor { text: line, bytes, has_controls, at: 0 }
    }

    /// Whether the whole line has been read.
    pub fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    pub fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    pub fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    pub fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let found = self.bytes[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found.then_some(())
    }

    /// A string value, or None (outer Some) for any other valid value.
    pub fn string_or_other(&mut self, open: &mut Vec<u8>) -> Option<Option<JsonText<'a>>> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.skip_value(open).map(|()| None)
    }

    /// A number's text and whether it is an integer, or None (outer Some) for any other valid value.
    pub fn number_or_other(&mut self, open: &mut Vec<u8>) -> Option<Option<(&'a str, bool)>> {
        if matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return self.number().map(Some);
        }
        self.skip_value(open).map(|()| None)
    }

    /// A token count: None for null, the count for an integer in 0..=u64::MAX, 0 for any other value (`-0`
    /// included, which is 0 anyway).
    pub fn count(&mut self, open: &mut Vec<u8>) -> Option<Option<u64>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        let count = match self.number_or_other(open)? {
            Some((text, true)) => text.parse::<u64>().unwrap_or(0),
            _ => 0,
        };
        Some(Some(count))
    }

    fn number(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.some_digits()?;
        }
        Some((&self.text[start..self.at], integer))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The string at the cursor, decoded.
    pub fn string(&mut self) -> Option<JsonText<'a>> {
        self.expect(b'"')?;
        let start = self.at;
        let end = self.plain_run()?;
        if self.bytes[end] == b'"' {
            self.at = end + 1;
            return Some(JsonText { text: Cow::Borrowed(&self.text[start..end]), lone_surrogate: false });
        }
        let mut decoded = String::from(&self.text[start..end]);
        let mut lone_surrogate = false;
        self.at = end;
        loop {
            if self.eat(b'"') {
                return Some(JsonText { text: Cow::Owned(decoded), lone_surrogate });
            }
            self.expect(b'\\')?;
            let escaped = self.peek()?;
            self.at += 1;
            match escaped {
                b'"' => decoded.push('"'),
                b'\\' => decoded.push('\\'),
                b'/' => decoded.push('/'),
                b'b' => decoded.push('\u{8}'),
                b'f' => decoded.push('\u{c}'),
                b'n' => decoded.push('\n'),
                b'r' => decoded.push('\r'),
                b't' => decoded.push('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    match unit {
                        0xD800..=0xDBFF if self.bytes[self.at..].starts_with(b"\\u") => {
                            let save = self.at;
                            self.at += 2;
                            let low = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&low) {
                                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                decoded.push(char::from_u32(code)?);
                            } else {
                                self.at = save;
                                push_lone_surrogate(&mut decoded);
                                lone_surrogate = true;
                            }
                        }
                        0xD800..=0xDFFF => {
                            push_lone_surrogate(&mut decoded);
                            lone_surrogate = true;
                        }
                        _ => decoded.push(char::from_u32(unit)?),
                    }
                }
                _ => return None,
            }
            let run_start = self.at;
            let run_end = self.plain_run()?;
            decoded.push_str(&self.text[run_start..run_end]);
            self.at = run_end;
        }
    }

    /// The end of the plain characters from the cursor: the position of the next quote or backslash. None
    /// when the string is unterminated or holds a control character.
    fn plain_run(&self) -> Option<usize> {
        let rest = &self.bytes[self.at..];
        let length = memchr::memchr2(b'"', b'\\', rest)?;
        if self.has_controls && rest[..length].iter().any(|&byte| byte < 0x20) {
            return None;
        }
        Some(self.at + length)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut unit = 0;
        for &digit in digits {
            unit = unit * 16 + char::from(digit).to_digit(16)?;
        }
        self.at += 4;
        Some(unit)
    }

    /// Skips one value, checking its grammar.
    pub fn skip_value(&mut self, open: &mut Vec<u8>) -> Option<()> {
        open.clear();
        loop {
            self.whitespace();
            match self.peek()? {
                b'{' | b'[' => {
                    // The record's object is level 1, a container directly in it level 2.
                    if open.len() + 2 > MAX_NESTING {
                        return None;
                    }
                    let bracket = self.bytes[self.at];
                    self.at += 1;
                    self.whitespace();
                    if self.eat(if bracket == b'{' { b'}' } else { b']' }) {
                        // An empty container is a whole value.
                    } else {
                        open.push(bracket);
                        if bracket == b'{' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.skip_string()?;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return None,
            }
            // After a value: close containers or go on to the next element.
            loop {
                let Some(&bracket) = open.last() else { return Some(()) };
                self.whitespace();
                if self.eat(b',') {
                    if bracket == b'{' {
                        self.whitespace();
                        self.member_key()?;
                    }
                    break;
                }
                self.expect(if bracket == b'{' { b'}' } else { b']' })?;
                open.pop();
            }
        }
    }

    /// A member's key and colon.
    fn member_key(&mut self) -> Option<()> {
        self.whitespace();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.skip_string()?;
        self.whitespace();
        self.expect(b':')
    }

    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            self.at = self.plain_run()?;
            if self.eat(b'"') {
                return Some(());
            }
            self.at += 1;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    self.at += 1;
                    self.hex4()?;
                }
                _ => return None,
            }
        }
    }
}

/// U+FFFD three times: how the metrics sink reads a lone surrogate (each byte of its UTF-8 form replaced).
fn push_lone_surrogate(decoded: &mut String) {
    decoded.push_str("\u{FFFD}\u{FFFD}\u{FFFD}");
}
