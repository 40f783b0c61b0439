//! A strict check that bytes are one JSON object, used to tell a whole record from a torn one.

/// Whether `bytes` is one strict JSON object (RFC 8259, UTF-8), optionally surrounded by whitespace.
pub fn is_json_object(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    let mut parser = JsonCheck { bytes: text.as_bytes(), at: 0 };
    parser.skip_whitespace();
    if parser.peek() != Some(b'{') || !parser.value() {
        return false;
    }
    parser.skip_whitespace();
    parser.at == parser.bytes.len()
}

/// A JSON grammar check without building values; containers are tracked on a stack, not by recursion.
struct JsonCheck<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonCheck<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> bool {
        // Each open container: b'{' or b'['.
        let mut open: Vec<u8> = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    if self.eat(b'}') {
                        if !self.after_value(&mut open) {
                            return false;
                        }
                    } else {
                        if !self.key() {
                            return false;
                        }
                        open.push(b'{');
                        continue;
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    if self.eat(b']') {
                        if !self.after_value(&mut open) {
                            return false;
                        }
                    } else {
                        open.push(b'[');
                        continue;
                    }
                }
                _ => {
                    if !self.scalar() || !self.after_value(&mut open) {
                        return false;
                    }
                }
            }
            if open.is_empty() {
                return true;
            }
        }
    }

    /// After a value inside containers: closes finished containers, then expects the next element.
    /// Returns false on a syntax error; leaves `open` empty when the outermost value is complete.
    fn after_value(&mut self, open: &mut Vec<u8>) -> bool {
        while let Some(&container) = open.last() {
            let close = if container == b'{' { b'}' } else { b']' };
            if self.eat(b',') {
                return container == b'[' || self.key();
            }
            if !self.eat(close) {
                return false;
            }
            open.pop();
        }
        true
    }

    /// A member's `"key":`.
    fn key(&mut self) -> bool {
        self.skip_whitespace();
        self.string() && self.eat(b':')
    }

    fn scalar(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    fn string(&mut self) -> bool {
        if self.peek() != Some(b'"') {
            return false;
        }
        self.at += 1;
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.at += 1;
                    return true;
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                        Some(b'u') => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5);
                            if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.at += 5;
                        }
                        _ => return false,
                    }
                }
                Some(byte) if byte < 0x20 => return false,
                Some(_) => self.at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_told_from_everything_else() {
        for good in [&b"{}"[..], b" {\"a\": [1, -2.5e+3, true, null, {\"b\": \"\\u00e9\\n\"}]} ", b"{\"\":{\"\":[]}}"] {
            assert!(is_json_object(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"a\":1",
            b"{\"a\":01}",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":NaN}",
            b"{\"a\":\"\x01\"}",
            b"{} {}",
            b"{\"a\":1.}",
            b"{\"a\":[1,]}",
            b"{\"a\xff\":1}",
            b"{\"a\":\"\\x\"}",
        ] {
            assert!(!is_json_object(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
